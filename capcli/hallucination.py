"""Object hallucination: object words in a caption that no reference of its photo mentions.

CHAIR-style (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"):
every caption is read for mentions of a fixed list of objects, each object a
group of words ("man", "woman", "boy", "people" ... are all *person*; "puppy"
is *dog*).  A mention is hallucinated when none of the photo's reference
captions mentions the same object.  Two figures:

- ``object_hallucination`` (CHAIR-i): hallucinated mentions / all mentions;
- ``caption_hallucination`` (CHAIR-s): captions with at least one
  hallucinated mention / all captions.

The list covers people, animals, vehicles, food, furniture, appliances and
the other COCO object categories, with plurals and the usual synonyms.
Multi-word names ("hot dog", "teddy bear") are matched before single words.
Pure Python: ``capcli eval`` uses it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from capcli.text import tokenize

# object -> the words (singular; plurals are added) that mention it
OBJECTS: dict[str, tuple[str, ...]] = {
    # people
    "person": (
        "person",
        "people",
        "man",
        "men",
        "woman",
        "women",
        "boy",
        "girl",
        "child",
        "children",
        "kid",
        "baby",
        "guy",
        "lady",
        "player",
        "skier",
        "surfer",
        "skateboarder",
        "snowboarder",
        "rider",
        "biker",
        "toddler",
        "adult",
        "teenager",
        "teen",
        "gentleman",
        "worker",
        "chef",
        "cyclist",
        "climber",
        "swimmer",
        "runner",
        "dancer",
        "crowd",
        "tourist",
        "soldier",
        "policeman",
        "officer",
        "friend",
        "couple",
        "family",
        "someone",
        "youngster",
        "infant",
        "mother",
        "father",
        "daughter",
        "son",
    ),
    # animals
    "dog": (
        "dog",
        "puppy",
        "pup",
        "doggy",
        "poodle",
        "terrier",
        "retriever",
        "labrador",
        "collie",
        "beagle",
        "pug",
        "dachshund",
        "shepherd",
        "greyhound",
        "husky",
        "chihuahua",
        "spaniel",
        "bulldog",
        "hound",
        "dalmatian",
    ),
    "cat": ("cat", "kitten", "kitty"),
    "horse": ("horse", "pony", "foal", "stallion", "mare"),
    "sheep": ("sheep", "lamb", "ram"),
    "cow": ("cow", "cattle", "bull", "calf", "ox", "oxen"),
    "elephant": ("elephant",),
    "bear": ("bear",),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "bird": (
        "bird",
        "pigeon",
        "seagull",
        "gull",
        "duck",
        "goose",
        "swan",
        "parrot",
        "owl",
        "eagle",
        "chicken",
        "hen",
        "crow",
        "sparrow",
    ),
    "fish": ("fish",),
    # vehicles
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "taxi", "cab", "suv", "sedan", "jeep", "van", "automobile"),
    "motorcycle": ("motorcycle", "motorbike", "scooter", "moped", "dirtbike"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner", "jetliner"),
    "bus": ("bus",),
    "train": ("train", "locomotive", "tram", "trolley"),
    "truck": ("truck", "pickup", "lorry"),
    "boat": ("boat", "ship", "kayak", "canoe", "sailboat", "yacht", "ferry", "raft"),
    # outdoor objects
    "traffic light": ("traffic light", "stoplight", "stop light"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench",),
    # accessories and sports
    "backpack": ("backpack",),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"),
    "tie": ("tie", "necktie"),
    "suitcase": ("suitcase", "luggage"),
    "frisbee": ("frisbee",),
    "skis": ("ski",),
    "snowboard": ("snowboard",),
    "ball": ("ball", "football", "soccer ball", "basketball", "baseball", "volleyball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard",),
    "surfboard": ("surfboard",),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    # kitchen and food
    "bottle": ("bottle",),
    "wine glass": ("wine glass",),
    "cup": ("cup", "mug"),
    "fork": ("fork",),
    "knife": ("knife", "knives"),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "sub"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    # furniture
    "chair": ("chair", "stool", "seat"),
    "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant", "plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "desk"),
    "toilet": ("toilet", "urinal"),
    # electronics and appliances
    "tv": ("tv", "television", "monitor", "screen"),
    "laptop": ("laptop", "computer", "notebook"),
    "mouse": ("mouse",),
    "remote": ("remote", "controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "smartphone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove", "range"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    # indoor objects
    "book": ("book",),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer"),
    "toothbrush": ("toothbrush",),
}


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith("fe"):
        return word[:-2] + "ves"
    if word.endswith("f"):
        return word[:-1] + "ves"
    return word + "s"


def _phrases() -> dict[tuple[str, ...], str]:
    table: dict[tuple[str, ...], str] = {}
    for obj, words in OBJECTS.items():
        for phrase in words:
            parts = tuple(phrase.split())
            table.setdefault(parts, obj)
            table.setdefault((*parts[:-1], _plural(parts[-1])), obj)
    return table


PHRASES = _phrases()
LONGEST = max(len(p) for p in PHRASES)


def objects_in(caption: str) -> list[str]:
    """The objects a caption mentions, in order (one per mention; longest phrase first)."""
    words = tokenize(caption)
    found, i = [], 0
    while i < len(words):
        for n in range(min(LONGEST, len(words) - i), 0, -1):
            obj = PHRASES.get(tuple(words[i : i + n]))
            if obj is not None:
                found.append(obj)
                i += n
                break
        else:
            i += 1
    return found


def hallucination(references: Mapping[str, Sequence[str]], hypotheses: Mapping[str, str]) -> dict[str, float]:
    """{"object_hallucination", "caption_hallucination", "object_mentions"} over the captioned photos."""
    mentions = hallucinated = bad_captions = 0
    for key, caption in hypotheses.items():
        truth = {obj for ref in references[key] for obj in objects_in(ref)}
        found = objects_in(caption)
        wrong = [obj for obj in found if obj not in truth]
        mentions += len(found)
        hallucinated += len(wrong)
        bad_captions += bool(wrong)
    return {
        "object_hallucination": hallucinated / mentions if mentions else 0.0,
        "caption_hallucination": bad_captions / len(hypotheses) if hypotheses else 0.0,
        "object_mentions": float(mentions),
    }
