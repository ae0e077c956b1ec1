"""Deterministic, plausible answers in the Self-Instruct formats (the simulated model).

Everything about *what* the simulator says lives here; the server only calls
:func:`answer`. The answer depends only on the prompt text, the seed and the choice index
(:func:`rng_for`), so runs are repeatable.

Detection rules (on the prompt text; for chat the message contents joined by newlines,
the user's message last) — :func:`detect` is the single place they live:

1. last non-blank line is ``<N>.``                   -> ``"list"``: continue the numbered
   list (first item without its number, then ``N+1. ...`` up to ~16 items). When the text
   before the first numbered item mentions "classification", the items are
   classification tasks.
2. last non-blank line starts with ``Is it classification?`` -> ``"classify"``: " Yes" or
   " No" from the task on the preceding ``Task:`` line (classification-looking verbs -> Yes).
3. last non-blank line starts with ``Task:`` and the prompt contains ``Class label:`` ->
   ``"output_first"``: 2-3 ``Class label: ...\\nInput: ...`` examples.
4. last non-blank line starts with ``Task:``         -> ``"input_first"``: ``Example k`` /
   ``Input:`` / ``Output:`` blocks, or ``Output: ...`` for tasks that need no input.
5. last non-blank line is ``<N>. Instruction:``     -> ``"alpaca"``: continue an Alpaca
   list: whole tasks as ``N. Instruction: / N. Input: / N. Output:`` separated by ``###``.
6. anything else                                     -> ``"generic"``: a plain paragraph.

List items: a grammar of verbs x objects x qualifiers, most with the asker's context
before and some with a constraint after (8-45 words; over half of them still pass the
ROUGE-L filter at 20,000 admitted); a ``duplicate_rate`` share are near-duplicates (small edits,
ROUGE-L > 0.7) of a small shared family; a ``bad_item_rate`` share are items the
Self-Instruct filters must drop (blacklisted words, "Write a program", leading
punctuation, <= 3 words, > 150 words, non-ASCII first character).

Instance answers: a ``bad_item_rate`` share of them are faulty in one of the ways the
instance filters catch (:func:`bad_instances`): an output equal to its input, an empty
output, an output ending with a colon, a repeated example, one input given two different
outputs (the task is dropped), more than 5 examples, no example at all (the task is
dropped), or a rambling answer longer than the instance stage's max_tokens (cut with
``finish_reason == "length"``; the task is dropped as truncated).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

LIST_LAST_LINE = re.compile(r"^\s*(\d{1,9})\.\s*$")  # bounded: int() of a huge number fails
ALPACA_LAST_LINE = re.compile(r"^\s*(\d{1,9})\.\s*Instruction:\s*$")
ALPACA_LIST_END = 19
CLASSIFY_QUESTION = "Is it classification?"
TASK_PREFIX = "Task:"
CLASS_LABEL = "Class label:"
LIST_MAX_ITEM = 16
FAMILY_SIZE = 40  # near-duplicates are edits of one of these shared instructions


@dataclass(frozen=True)
class AnswerSettings:
    duplicate_rate: float = 0.0
    bad_item_rate: float = 0.0


def rng_for(prompt_text: str, seed: int | str, choice_index: int) -> random.Random:
    """A generator seeded from the prompt, the server seed and the choice index
    (blake2b, so it is stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}\x00{choice_index}\x00{prompt_text}".encode(), digest_size=8)
    return random.Random(int.from_bytes(digest.digest(), "big"))


def detect(prompt_text: str) -> str:
    """Which kind of answer the prompt asks for (see the module docstring)."""
    lines = [ln for ln in prompt_text.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    if LIST_LAST_LINE.match(last):
        return "list"
    if last.startswith(CLASSIFY_QUESTION):
        return "classify"
    if last.startswith(TASK_PREFIX):
        return "output_first" if CLASS_LABEL in prompt_text else "input_first"
    if ALPACA_LAST_LINE.match(last):
        return "alpaca"
    return "generic"


def answer(prompt_text: str, rng: random.Random, settings: AnswerSettings) -> str:
    kind = detect(prompt_text)
    lines = [ln for ln in prompt_text.splitlines() if ln.strip()]
    if kind == "list":
        match = LIST_LAST_LINE.match(lines[-1])
        assert match is not None
        return _continue_list(int(match.group(1)), _wants_classification(lines), rng, settings)
    if kind == "classify":
        return " Yes" if looks_like_classification(_task_line(lines[:-1])) else " No"
    if kind == "alpaca":
        match = ALPACA_LAST_LINE.match(lines[-1])
        assert match is not None
        return _continue_alpaca(int(match.group(1)), rng, settings)
    if kind in ("output_first", "input_first"):
        task = lines[-1][len(TASK_PREFIX):].strip()
        classification = kind == "output_first"
        # Drawn only when bad answers are asked for: without them, answers stay as before.
        if settings.bad_item_rate > 0 and rng.random() < settings.bad_item_rate:
            return bad_instances(task, rng, classification)
        return _output_first(task, rng) if classification else _input_first(task, rng)
    return generic_paragraph(rng)


# --------------------------------------------------------------------------- detection helpers
_CLASSIFY_VERBS = re.compile(
    r"\b(classify|categori[sz]e|decide whether|detect whether|identify whether|determine whether|"
    r"label|is this|is it|tell whether|sort the following|which category)\b",
    re.IGNORECASE,
)


def looks_like_classification(task: str) -> bool:
    return bool(_CLASSIFY_VERBS.search(task))


def _task_line(lines: list[str]) -> str:
    for ln in reversed(lines):
        if ln.strip().startswith(TASK_PREFIX):
            return ln.strip()[len(TASK_PREFIX):].strip()
    return lines[-1] if lines else ""


def _wants_classification(lines: list[str]) -> bool:
    header: list[str] = []
    for ln in lines:
        if re.match(r"^\s*\d+\.", ln):
            break
        header.append(ln)
    return "classification" in " ".join(header).lower()


# --------------------------------------------------------------------------- grammar
_DOCS = ["news article", "email", "product review", "blog post", "speech", "cover letter",
         "research abstract", "short story", "movie review", "job posting", "press release",
         "opinion piece", "customer complaint", "podcast transcript", "lecture summary",
         "travel diary entry", "business proposal", "letter to the editor", "restaurant review",
         "meeting summary"]
_PARTS = ["main argument", "key points", "central idea", "overall tone", "conclusion",
          "opening paragraph", "strongest claim", "weakest point", "intended audience",
          "underlying assumptions"]
_V1 = ["Summarize", "Explain", "Analyze", "Critique", "Describe", "Evaluate", "Outline"]
_Q1 = ["in two sentences", "in plain language", "for a ten-year-old reader",
       "in under fifty words", "using three bullet points", "in a neutral tone",
       "for a busy executive", "without quoting it directly", "as a single short paragraph",
       "as if explaining it to a friend", "in simple everyday words", "for a school newsletter",
       "with one concrete example", "in a formal register", "in the style of a news anchor",
       "for someone who has not read it", "in a friendly tone", "in one sentence",
       "highlighting anything surprising", "and suggest one improvement"]
_V2 = ["Write", "Compose", "Draft", "Create"]
_LEN = ["short", "brief", "two-paragraph", "humorous", "heartfelt", "persuasive"]
_FORMS = ["poem", "story", "essay", "speech", "dialogue", "letter", "blog post",
          "product description", "limerick", "toast", "advertisement", "news report",
          "diary entry", "song verse", "fable"]
_TOPICS = ["a rainy afternoon", "the first day of school", "a lost umbrella", "city gardens",
           "a long train journey", "learning to swim", "an old lighthouse", "morning coffee",
           "a forgotten birthday", "friendship between neighbours", "a quiet library",
           "the end of summer", "a stubborn cat", "moving to a new town", "a village market",
           "the night sky", "a family recipe", "a broken bicycle", "volunteering at a shelter",
           "a mountain hike", "the smell of fresh bread", "a job interview", "winter mornings",
           "a surprise party", "climate change", "electric cars", "remote work",
           "a small bookshop", "honey bees", "a school science fair", "a missed flight",
           "the ocean at dawn", "a grandparent's advice", "a power outage", "street musicians",
           "a new puppy", "public libraries", "a football final", "a garden in spring",
           "the history of tea", "a haunted house", "a robot that learns to cook",
           "a museum at night", "the last day of a vacation", "recycling at home",
           "a snowy village", "a kindness from a stranger", "the invention of the wheel",
           "a busy hospital shift", "a childhood treehouse", "a desert road trip",
           "learning to play the piano", "a lighthouse keeper", "an unexpected letter",
           "a crowded bus", "the first snowfall", "a farmers market", "a late-night diner",
           "a community cleanup", "running a first marathon"]
_Q2 = ["for a general audience", "that a teenager would enjoy", "in the voice of a pirate",
       "that ends with a surprise", "using only simple words", "with a hopeful ending",
       "for a local newspaper", "in fewer than one hundred words", "from the point of view of a child",
       "that includes a short moral", "in a cheerful tone", "with vivid sensory details",
       "that rhymes", "suitable for reading aloud", "for a greeting card"]
_V3 = ["Suggest", "List", "Give", "Recommend", "Brainstorm", "Propose"]
_COUNTS = ["three", "four", "five", "six", "seven", "ten"]
_THINGS = ["practical tips", "creative ideas", "common mistakes to avoid", "questions to ask",
           "simple strategies", "useful habits", "low-cost ways", "fun activities", "key steps",
           "good reasons"]
_GOALS = ["saving money on groceries", "learning a new language", "preparing for a job interview",
          "sleeping better", "staying focused while studying", "planning a birthday party",
          "starting a vegetable garden", "reducing household waste", "making new friends in a new city",
          "training for a five kilometre run", "organizing a small office", "writing a clear email",
          "teaching children about money", "cooking healthy meals on a budget",
          "preparing for a long flight", "improving public speaking", "keeping houseplants alive",
          "running an effective meeting", "welcoming a new employee", "choosing a used car",
          "staying safe while hiking", "decluttering a bedroom", "reading more books",
          "volunteering in the community", "caring for an older dog", "reducing screen time",
          "writing a strong cover letter", "getting started with photography",
          "hosting a dinner for eight people", "preparing for an exam week",
          "making a small apartment feel larger", "learning to cook rice well",
          "staying motivated when working from home", "planning a weekend road trip",
          "improving a short essay", "negotiating a higher salary", "supporting a grieving friend",
          "keeping a daily journal", "starting a book club", "building a morning routine"]
_Q3 = ["for a beginner", "with a short explanation for each", "that cost nothing",
       "for a busy parent", "that a student could follow", "ranked from easiest to hardest",
       "for someone with little free time", "in a numbered list", "with one example each",
       "for a small team", "that take less than ten minutes", "for a retired person"]
_CONCEPTS = ["photosynthesis", "compound interest", "the water cycle", "supply and demand",
             "how vaccines work", "why the sky is blue", "inflation", "the greenhouse effect",
             "how a bill becomes a law", "machine learning", "the difference between weather and climate",
             "how airplanes stay in the air", "the causes of the seasons", "opportunity cost",
             "how credit scores work", "the basics of a healthy diet", "plate tectonics",
             "how a search engine ranks pages", "the placebo effect", "the rule of law",
             "how tides work", "the scientific method", "the purpose of a central bank",
             "how recycling works", "the importance of sleep", "how rainbows form",
             "what a blockchain is", "the role of enzymes in digestion", "how elections are counted",
             "the meaning of biodiversity"]
_AUDIENCES = ["a ten-year-old", "a high school student", "a retired teacher", "a new employee",
              "a curious grandparent", "a tourist", "a small business owner", "a first-year student",
              "someone who dislikes science", "a busy nurse", "a journalist", "a farmer"]
_Q4 = ["using an everyday analogy", "in three short paragraphs", "without technical jargon",
       "in fewer than eighty words", "with one real-world example", "step by step",
       "as a short dialogue", "and mention one common misconception", "in a friendly tone",
       "using a simple story", "in five sentences", "and end with a quick question to check understanding"]

_CLS_ASPECTS = [("sentiment", "positive", "negative"), ("tone", "formal", "informal"),
                ("urgency", "urgent", "not urgent"), ("stance", "supportive", "critical"),
                ("formality", "formal", "casual"), ("subjectivity", "subjective", "objective"),
                ("intent", "a request", "a complaint"), ("politeness", "polite", "rude")]
_CLS_ITEMS = [("animal", ["mammal", "bird", "reptile"]), ("food", ["fruit", "vegetable", "grain"]),
              ("news headline", ["sports", "politics", "technology"]),
              ("sentence", ["question", "statement", "command"]),
              ("support ticket", ["billing", "technical issue", "account access"]),
              ("book title", ["fiction", "non-fiction", "poetry"]),
              ("movie description", ["comedy", "drama", "thriller"]),
              ("email subject line", ["work", "personal", "promotion"])]
_CLS_FEATURES = ["sarcasm", "a factual error", "a question", "an apology", "a request for help",
                 "offensive language", "a deadline", "a personal opinion"]
_CLS_PAIRS = [("a fact", "an opinion"), ("a question", "a statement"),
              ("grammatically correct", "grammatically incorrect"), ("spam", "not spam"),
              ("true", "false"), ("a compliment", "a criticism")]


def _pick(rng: random.Random, items: list[str]) -> str:
    return items[rng.randrange(len(items))]


# Who asks and why, and what else they want: most instructions get a context before the
# task and some a constraint after it, as people write them. Without these, instructions
# of one template differ in a slot or two and score above 0.7 against each other: the
# grammar ran out of admissible instructions after ~3,000, so long runs and benchmarks
# measured the grammar, not the pipeline. (No word here is on the filters' blacklist,
# reads as a classification task or asks for an input: the template decides those.)
_PERSONAS = ["school librarian", "night-shift nurse", "first-time manager", "retired engineer",
             "college student", "small bakery owner", "volunteer coach", "museum guide",
             "software tester", "high school teacher", "travel agent", "city planner",
             "new parent", "freelance translator", "dairy farmer", "bus driver", "park ranger",
             "dental hygienist", "restaurant chef", "local reporter", "hotel receptionist",
             "graduate researcher", "shop assistant", "yoga instructor", "community organizer",
             "carpenter", "bank teller", "pharmacist", "wedding planner", "science tutor",
             "office administrator", "football referee", "beekeeper", "hospital porter",
             "youth worker", "bookshop owner", "marathon runner", "tax adviser",
             "kindergarten assistant", "ferry captain"]
_SITUATIONS = ["preparing for a busy week", "planning next month", "working on a tight budget",
               "starting a new project", "helping a colleague", "getting ready for a trip",
               "writing to a new client", "coming back from holiday", "moving house soon",
               "training a new hire", "organizing a charity event", "studying in the evenings",
               "running late on a deadline", "sharing advice with neighbours",
               "preparing a staff meeting", "teaching an evening class", "writing a newsletter",
               "planning a family reunion", "looking for a new job", "learning from mistakes",
               "talking to worried parents", "raising money for a club", "mentoring a student",
               "recovering from a cold", "building a side business", "improving team morale",
               "answering customer emails", "writing for a local radio show",
               "planning a garden party", "getting ready for an inspection"]
_LIMITS = ["sixty", "eighty", "one hundred", "one hundred and fifty", "two hundred", "three hundred"]
_MENTIONS = ["a realistic cost", "one thing to avoid", "a time estimate", "a personal anecdote",
             "a helpful comparison", "a common question", "a quick win", "a long-term benefit",
             "one surprising fact", "a simple checklist", "a friendly reminder", "a safety note",
             "a useful resource", "a counterargument", "a memorable phrase"]
_ENDINGS = ["a practical next step", "an encouraging sentence", "a short summary",
            "an open question", "a clear recommendation", "a light joke", "a call to action",
            "a word of caution", "a one-line takeaway", "a thank-you note"]
_AVOIDS = ["jargon", "long sentences", "exclamation marks", "passive voice", "clichés",
           "brand names", "technical terms", "sarcasm", "rhetorical questions", "repetition"]


def _constraint(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"Keep the answer under {_pick(rng, _LIMITS)} words."
    if kind == 1:
        return f"Mention {_pick(rng, _MENTIONS)} and {_pick(rng, _MENTIONS)}."
    if kind == 2:
        return f"End with {_pick(rng, _ENDINGS)}."
    return f"Avoid {_pick(rng, _AVOIDS)} and {_pick(rng, _AVOIDS)}."


def make_instruction(rng: random.Random) -> str:
    """One plausible general instruction, 8-45 words: a task from one of four templates,
    usually with the asker's context before it and sometimes a constraint after it."""
    text = _base_instruction(rng)
    if rng.random() < 0.8:
        persona = _pick(rng, _PERSONAS)
        art = "an" if persona[0] in "aeiou" else "a"
        text = f"As {art} {persona} {_pick(rng, _SITUATIONS)}, {text[0].lower()}{text[1:]}"
    if rng.random() < 0.5:
        text = f"{text} {_constraint(rng)}"
    return text


def _base_instruction(rng: random.Random) -> str:
    # weighted towards the two largest families (324k and 173k combinations)
    kind = rng.choices((0, 1, 2, 3), weights=(20, 35, 35, 10))[0]
    if kind == 0:
        text = f"{_pick(rng, _V1)} the {_pick(rng, _PARTS)} of the following {_pick(rng, _DOCS)} {_pick(rng, _Q1)}."
    elif kind == 1:
        length, form = _pick(rng, _LEN), _pick(rng, _FORMS)
        art = "an" if length[0] in "aeiou" else "a"
        text = f"{_pick(rng, _V2)} {art} {length} {form} about {_pick(rng, _TOPICS)} {_pick(rng, _Q2)}."
    elif kind == 2:
        text = f"{_pick(rng, _V3)} {_pick(rng, _COUNTS)} {_pick(rng, _THINGS)} for {_pick(rng, _GOALS)} {_pick(rng, _Q3)}."
    else:
        text = f"Explain {_pick(rng, _CONCEPTS)} to {_pick(rng, _AUDIENCES)} {_pick(rng, _Q4)}."
    return text


def make_classification_instruction(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        aspect, a, b = _CLS_ASPECTS[rng.randrange(len(_CLS_ASPECTS))]
        return f"Classify the {aspect} of the following {_pick(rng, _DOCS)} as {a} or {b}."
    if kind == 1:
        a, b = _CLS_PAIRS[rng.randrange(len(_CLS_PAIRS))]
        return f"Decide whether the following {_pick(rng, _DOCS)} is {a} or {b}."
    if kind == 2:
        item, labels = _CLS_ITEMS[rng.randrange(len(_CLS_ITEMS))]
        return f"Categorize the following {item} into one of these groups: {labels[0]}, {labels[1]}, or {labels[2]}."
    if kind == 3:
        return (f"Detect whether the following {_pick(rng, _DOCS)} contains "
                f"{_pick(rng, _CLS_FEATURES)}. Answer yes or no.")
    a, b = _CLS_PAIRS[rng.randrange(len(_CLS_PAIRS))]
    return f"Identify whether the given sentence from a {_pick(rng, _DOCS)} is {a} or {b}."


def family_instruction(i: int, classification: bool = False) -> str:
    """Member ``i`` of the shared near-duplicate family (same for every prompt and seed)."""
    rng = random.Random(0x5E1F + i * 7919 + (1 if classification else 0))
    return make_classification_instruction(rng) if classification else make_instruction(rng)


def near_duplicate(rng: random.Random, classification: bool = False) -> str:
    """A family member, or a small edit of it (ROUGE-L against it stays above 0.7)."""
    base = family_instruction(rng.randrange(FAMILY_SIZE), classification)
    edit = rng.randrange(4)
    if edit == 0:
        return base
    if edit == 1:
        return "Please " + base[0].lower() + base[1:]
    if edit == 2:
        return base[:-1] + ", please."
    words = base.split()
    swaps = {"the": "this", "following": "given", "a": "one", "for": "to help with"}
    for j, w in enumerate(words):
        if w in swaps:
            words[j] = swaps[w]
            break
    return " ".join(words)


_BAD_KINDS = ["blacklist", "program", "punct", "short", "long", "non_ascii"]


def bad_item(rng: random.Random) -> str:
    """An item the reference filters drop, of one of several kinds."""
    kind = _pick(rng, _BAD_KINDS)
    if kind == "blacklist":
        return _pick(rng, [
            f"Draw a simple map of {_pick(rng, _TOPICS)} and label the main places.",
            f"Create a graph that shows how {_pick(rng, _GOALS)} changes over a year.",
            "Describe the image below and list every object you can see in it.",
            f"Open the attached file and summarize the {_pick(rng, _PARTS)} it contains.",
            f"Plot the monthly costs of {_pick(rng, _GOALS)} for the last two years.",
        ])
    if kind == "program":
        return f"Write a program that helps with {_pick(rng, _GOALS)} for a small team."
    if kind == "punct":
        return "- " + make_instruction(rng)
    if kind == "short":
        return _pick(rng, ["Explain photosynthesis.", "Tell a joke.", "Define inflation.", "Be creative."])
    if kind == "long":
        return " ".join(make_instruction(rng) for _ in range(20))  # >= 160 words
    return "¿" + make_instruction(rng)


def _list_item(rng: random.Random, classification: bool, settings: AnswerSettings) -> str:
    u = rng.random()
    if u < settings.duplicate_rate:
        return near_duplicate(rng, classification)
    if u < settings.duplicate_rate + settings.bad_item_rate:
        return bad_item(rng)
    return make_classification_instruction(rng) if classification else make_instruction(rng)


def _continue_list(next_number: int, classification: bool, rng: random.Random,
                   settings: AnswerSettings) -> str:
    last = max(next_number, LIST_MAX_ITEM + rng.randrange(-2, 2))
    parts = [" " + _list_item(rng, classification, settings)]
    for number in range(next_number + 1, last + 1):
        parts.append(f"{number}. {_list_item(rng, classification, settings)}")
    return "\n".join(parts)


def _continue_alpaca(next_number: int, rng: random.Random, settings: AnswerSettings) -> str:
    """Whole tasks after the prompt's ``N. Instruction:``, up to item 19."""
    parts = []
    last = max(next_number, ALPACA_LIST_END - rng.randrange(0, 3))
    for number in range(next_number, last + 1):
        instruction = _list_item(rng, False, settings)
        needs_input = bool(_NEEDS_INPUT.search(instruction))
        given = input_text(rng) if needs_input else "<noinput>"
        output = generic_paragraph(rng, sentences=1 + rng.randrange(3)).strip()
        head = " " if number == next_number else f"{number}. Instruction: "
        parts.append(f"{head}{instruction}\n{number}. Input:\n{given}\n{number}. Output:\n{output}\n")
    return "###\n".join(parts)


# --------------------------------------------------------------------------- instances
_ADJ = ["wonderful", "disappointing", "surprisingly good", "terrible", "pleasant", "slow",
        "excellent", "confusing", "friendly", "overpriced", "helpful", "noisy"]
_SUBJECTS = ["The staff", "My order", "The new update", "The hotel room", "The delivery",
             "The lecture", "This phone", "The customer service team", "The museum tour", "Our meeting"]
_PHRASES = ["arrived two days late", "was exactly what I needed", "made the whole day easier",
            "could have been much shorter", "exceeded every expectation", "left me with more questions",
            "was handled with real care", "felt rushed and careless", "saved us a lot of time",
            "needs a clearer explanation"]


def input_text(rng: random.Random) -> str:
    return (f"{_pick(rng, _SUBJECTS)} {_pick(rng, _PHRASES)}, and overall it was "
            f"{_pick(rng, _ADJ)}.")


def labels_for(task: str) -> list[str]:
    """The labels a classification task names, or a plausible default pair."""
    m = re.search(r"groups?:\s*([^.]+)", task)
    if m:
        return [x.strip() for x in re.split(r",\s*(?:or\s+)?|\s+or\s+", m.group(1)) if x.strip()]
    if re.search(r"\byes or no\b", task, re.IGNORECASE):
        return ["Yes", "No"]
    m = re.search(r"\b(?:as|is)\s+([\w -]+?)\s+or\s+([\w -]+?)[.?]", task)
    if m:
        return [m.group(1).strip(), m.group(2).strip()]
    return ["Positive", "Negative"]


def _output_first(task: str, rng: random.Random) -> str:
    labels = labels_for(task)
    count = 2 + rng.randrange(2)
    blocks = []
    for k in range(count):
        label = labels[k % len(labels)]
        blocks.append(f"{CLASS_LABEL} {label}\nInput: {input_text(rng)}")
    return "\n\n".join(blocks)


_NEEDS_INPUT = re.compile(r"\b(following|given|this|below|provided)\b", re.IGNORECASE)


def _input_first(task: str, rng: random.Random) -> str:
    if not _NEEDS_INPUT.search(task):
        return "Output: " + generic_paragraph(rng, sentences=2 + rng.randrange(3)).strip()
    blocks = []
    for k in range(1, 2 + rng.randrange(2) + 1):
        blocks.append(f"Example {k}\nInput: {input_text(rng)}\n"
                      f"Output: {generic_paragraph(rng, sentences=1 + rng.randrange(2)).strip()}")
    return "\n\n".join(blocks)


_OPENERS = ["In short,", "Overall,", "Put simply,", "In practice,", "As a rule,", "For most people,"]
_CLAIMS = ["the most useful step is to start small and stay consistent",
           "a clear plan saves more time than it costs",
           "the details matter less than the overall direction",
           "asking one good question often beats reading ten answers",
           "habits built slowly tend to last the longest",
           "a short summary helps the reader more than a long list",
           "the simplest explanation is usually the right place to begin",
           "regular feedback makes every project better"]
_FOLLOWS = ["This keeps the effort manageable.", "It also makes progress easy to see.",
            "That is why experienced people recommend it.", "The rest follows naturally.",
            "Small improvements add up over a few weeks.", "It works well in most situations."]


def generic_paragraph(rng: random.Random, sentences: int | None = None) -> str:
    count = sentences if sentences is not None else 3 + rng.randrange(4)
    out = [f"{_pick(rng, _OPENERS)} {_pick(rng, _CLAIMS)}."]
    out += [_pick(rng, _FOLLOWS) for _ in range(count - 1)]
    return " " + " ".join(out)


# --------------------------------------------------------------------------- bad instances
BAD_INSTANCE_KINDS = ("same_as_input", "empty_output", "colon", "duplicate", "conflicting",
                      "too_many", "none", "rambling")
RAMBLING_CHARS = 3000  # beyond any usual instance max_tokens (300-350 tokens, ~4 chars each)


def _distinct_inputs(rng: random.Random, count: int) -> list[str]:
    inputs: list[str] = []
    while len(inputs) < count:
        text = input_text(rng)
        if text not in inputs:
            inputs.append(text)
    return inputs


def _format_instances(pairs: list[tuple[str, str]], classification: bool) -> str:
    if classification:
        return "\n\n".join(f"{CLASS_LABEL} {out}\nInput: {inp}".replace(" \n", "\n")
                           for inp, out in pairs)
    return "\n\n".join(f"Example {k}\nInput: {inp}\nOutput: {out}".rstrip()
                       for k, (inp, out) in enumerate(pairs, start=1))


def bad_instances(task: str, rng: random.Random, classification: bool = False) -> str:
    """An instance answer the instance filters (or the truncation rule) must catch, of one
    of :data:`BAD_INSTANCE_KINDS`; output-first format for classification tasks."""
    # The output-first parser skips an example without a label, so an empty output can
    # only come from an input-first answer.
    kinds = [k for k in BAD_INSTANCE_KINDS if not (classification and k == "empty_output")]
    kind = _pick(rng, kinds)
    labels = labels_for(task) if classification else []

    def output(k: int) -> str:
        return labels[k % len(labels)] if classification else _pick(rng, _FOLLOWS)

    if kind == "none":
        return " I am not sure what examples would suit this task."
    if kind == "rambling":
        parts: list[str] = []
        while sum(len(p) for p in parts) < RAMBLING_CHARS:
            parts.append(generic_paragraph(rng, sentences=4).strip())
        return _format_instances([(input_text(rng), " ".join(parts))], classification)
    if kind == "too_many":
        inputs = _distinct_inputs(rng, 6)
        pairs = [(inp, output(k)) for k, inp in enumerate(inputs)]
        if classification:
            return _format_instances(pairs, classification)
        # without "Example N" headers: the "Example 6" stop sequence cannot cut it short
        return "\n\n".join(f"Input: {inp}\nOutput: {out}" for inp, out in pairs)
    first, second = _distinct_inputs(rng, 2)
    good = [(first, output(0)), (second, output(1))]
    if kind == "same_as_input":
        bad = (second, second)
    elif kind == "empty_output":
        bad = (second, "")
    elif kind == "colon":
        bad = (second, "Here is the answer:")
    elif kind == "duplicate":
        bad = good[0]
    else:  # conflicting: the first input again, with another output
        other = labels[1 % len(labels)] if classification and len(set(labels)) > 1 else None
        bad = (first, other if other and other != good[0][1] else "A different answer entirely.")
    return _format_instances([*good, bad], classification)
