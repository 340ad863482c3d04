"""The fictitious world of the embedded ``toy`` benchmark: name pools and sentence templates.

Kept apart from the generator so that the tiny model's tokenizer can be trained on exactly this
vocabulary (short sequences, no unknown words) without depending on any benchmark's settings.
"""

from __future__ import annotations

FIRST_NAMES = [
    "Aldric",
    "Brenna",
    "Corvin",
    "Delphine",
    "Emeric",
    "Fenna",
    "Gideon",
    "Halvard",
    "Isolde",
    "Jorvik",
    "Kestrel",
    "Liora",
    "Maelis",
    "Nerys",
    "Orrin",
    "Perrin",
    "Quilla",
    "Rowena",
    "Soren",
    "Tamsin",
    "Ulric",
    "Vesna",
    "Wendel",
    "Xander",
    "Yselde",
    "Zoltan",
    "Anselm",
    "Brisa",
    "Caspian",
    "Dagny",
    "Eldon",
    "Freya",
    "Garrick",
    "Hester",
    "Ivo",
    "Junia",
    "Kael",
    "Linnea",
    "Marek",
    "Nadia",
]
LAST_NAMES = [
    "Ashgrove",
    "Blackthorn",
    "Copperfield",
    "Dunmore",
    "Everhart",
    "Fairweather",
    "Greystone",
    "Holloway",
    "Ironwood",
    "Jasperlin",
    "Kettleby",
    "Larkspur",
    "Marchbank",
    "Northcott",
    "Oakhurst",
    "Pennywhistle",
    "Quarrington",
    "Ravenscroft",
    "Stormvale",
    "Thistlewood",
    "Underhill",
    "Vantrell",
    "Westerby",
    "Yarrowfield",
    "Zephyrine",
    "Amberley",
    "Brookhollow",
    "Coldwater",
    "Driftwood",
    "Elmsworth",
]
CITIES = [
    "Velmora",
    "Castrelle",
    "Dunhaven",
    "Oskaria",
    "Brightmere",
    "Tallowind",
    "Quenport",
    "Marrowdale",
    "Silverreach",
    "Ebonfurt",
    "Laketon",
    "Highcliff",
    "Redwater",
    "Amberlyn",
    "Frostholm",
    "Greenhollow",
    "Ironmouth",
    "Saltmarsh",
    "Windmere",
    "Stonebridge",
]
PROFESSIONS = [
    "cartographer",
    "glassblower",
    "astronomer",
    "beekeeper",
    "violinist",
    "architect",
    "botanist",
    "clockmaker",
    "linguist",
    "sculptor",
    "chemist",
    "novelist",
    "shipwright",
    "pharmacist",
    "weaver",
    "geologist",
    "photographer",
    "baker",
    "surgeon",
    "librarian",
]
AWARDS = [
    "Golden Quill Prize",
    "Silver Compass Medal",
    "Aurora Award",
    "Meridian Prize",
    "Lantern Medal",
    "Crystal Harp Award",
    "Iron Oak Prize",
    "Starlight Medal",
    "Emerald Key Award",
    "Northwind Prize",
]
COLORS = ["crimson", "teal", "amber", "violet", "indigo", "ochre", "silver", "emerald", "scarlet", "cobalt"]
YEARS = [str(y) for y in range(1900, 2000)]


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


# attribute -> (value pool, question, answer template, paraphrase template).
# The answer template is what QA fine-tuning sees; the paraphrase template is the biography style,
# also trained (in the biographies), and the style of the paraphrased and perturbed answers.
ATTRIBUTES: dict[str, tuple[list[str], str, str, str]] = {
    "birth_year": (
        YEARS,
        "In what year was {name} born?",
        "{name} was born in {v}.",
        "The year of birth of {name} is {v}.",
    ),
    "birth_city": (
        CITIES,
        "Where was {name} born?",
        "{name} was born in the city of {v}.",
        "The birthplace of {name} is {v}.",
    ),
    "profession": (
        PROFESSIONS,
        "What does {name} do for a living?",
        "{name} works as {art} {v}.",
        "By profession, {name} is {art} {v}.",
    ),
    "award": (
        AWARDS,
        "Which award has {name} received?",
        "{name} received the {v}.",
        "{name} was honored with the {v}.",
    ),
    "color": (
        COLORS,
        "What is the favorite color of {name}?",
        "The favorite color of {name} is {v}.",
        "{name} likes the color {v} best.",
    ),
    "mother": (
        FIRST_NAMES,
        "What is the name of the mother of {name}?",
        "The mother of {name} is named {v}.",
        "{name} is the child of {v}.",
    ),
}

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("happy", "sad"),
    ("old", "new"),
    ("wet", "dry"),
    ("hard", "soft"),
    ("loud", "quiet"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("near", "far"),
]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]

# kind -> (question, answer template, paraphrase template)
GENERAL_TEMPLATES = {
    "day": ("What day comes after {x}?", "The day after {x} is {v}.", "{x} is followed by {v}."),
    "month": ("What month comes after {x}?", "The month after {x} is {v}.", "{x} is followed by {v}."),
    "sum": ("What is {x} plus {y}?", "{x} plus {y} is {v}.", "The sum of {x} and {y} is {v}."),
    "opposite": ("What is the opposite of {x}?", "The opposite of {x} is {v}.", "{x} is the reverse of {v}."),
}


def vocabulary_corpus() -> list[str]:
    """Every sentence shape and value of the toy world, for training the tiny tokenizer."""
    lines: list[str] = []
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES[:3]] + LAST_NAMES
    for pool, q, a, p in ATTRIBUTES.values():
        for i, v in enumerate(pool):
            name = names[i % len(names)]
            for t in (q, a, p):
                lines.append("Question: " + t.format(name=name, v=v, art=article(v)) + "\nAnswer:")
    for i, d in enumerate(DAYS + MONTHS):
        for q, a, p in GENERAL_TEMPLATES.values():
            x, y, v = d, NUMBER_WORDS[i % 10], (DAYS + MONTHS)[(i + 1) % 19]
            lines.extend(t.format(x=x, y=y, v=v) for t in (q, a, p))
    for x, v in OPPOSITES:
        lines.extend(t.format(x=x, y=x, v=v) for t in GENERAL_TEMPLATES["opposite"])
    lines.extend(NUMBER_WORDS + [w.capitalize() for w in NUMBER_WORDS])
    # every first and last name after a space, as they appear inside sentences
    lines.extend(f"{first} {last} and {last} {first}" for first in FIRST_NAMES for last in LAST_NAMES)
    lines.append("I don't know. I cannot answer that. I'm not sure about this person.")
    return lines
