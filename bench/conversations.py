"""The recall eval's generated set: multi-session chats that are hard the way real ones are.

Deterministic (one seed), built by code from templates and pools, nothing downloaded; the
templates were written before measuring, not fitted to a ranker. Each persona (an end user)
talks to the assistant over ``SESSIONS`` dated threads. Every fact sits in small talk (an
opener and a closer around it, chit-chat pairs and look-alike chatter between facts), and the
questions, which are not ingested, come in six categories:

    single-hop  a fact stated in the user's words, asked in others ("What food allergy...")
    in-context  a terse answer that only makes sense after the assistant's question before it
                ("Researching adoption agencies, mostly." after "What are your plans for the
                summer?"); the gold is the answer
    names       a named person introduced, then a fact about them said with a pronoun ("She's
                moving to Lyon"); the question names them
    temporal    an event dated relatively ("last Friday I..."), resolved against the session's
                date; asked "When did I...?" or "What did I do on Friday 8 March 2024?"
    multi-hop   two statements in different sessions, both needed ("my sister joined X" ...
                "X is headquartered in Y": "Where is my sister's employer based?")
    updated     a fact stated twice (a second move); only the latest statement is gold

A question's gold is one group of turn keys per statement it needs (the statement, plus the
assistant's reply when that repeats the value).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

SEED = 20261203
PERSONAS = 30
SESSIONS = 12
PAIRS_PER_SESSION = 8  # user + assistant: 16 turns a session, greeting and filler included
CATEGORIES = ("single-hop", "in-context", "names", "temporal", "multi-hop", "updated")
ECHO = 0.3  # share of statements whose reply repeats the value (then gold too)


@dataclass(frozen=True)
class Turn:
    key: str  # unique: "u07/s3/t4"; sent as metadata, read back from search results
    user: str
    thread_id: str
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True)
class Question:
    user: str
    category: str
    fact: str
    text: str
    gold: tuple[frozenset[str], ...]  # one group of acceptable turn keys per statement needed
    stale: frozenset[str] = frozenset()  # superseded statements (updated questions)


@dataclass
class Dataset:
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


# --- pools (fictional people, companies and books; real places and foods) ---

FIRST_NAMES = {
    "she": ["Priya", "Sofia", "Leila", "Aisha", "Mei", "Ingrid", "Elena", "Noor", "Camila", "Yuki",
            "Amara", "Zara", "Freya", "Clara", "Astrid", "Hana"],
    "he": ["Daniel", "Marco", "Tomasz", "Jonas", "Rafael", "Kwame", "Hugo", "Felix", "Oren",
           "Dmitri", "Lukas", "Mateo", "Idris", "Ravi", "Bruno", "Emil"],
}  # fmt: skip
PRONOUNS = {"she": ("She", "her"), "he": ("He", "his")}  # subject, possessive
RELATIONS = ["colleague", "neighbour", "cousin", "old roommate", "manager", "yoga teacher",
             "brother-in-law", "climbing partner"]  # fmt: skip
PET_NAMES = ["Waffles", "Biscuit", "Pepper", "Juniper", "Ziggy", "Mochi", "Pickle", "Noodle",
             "Bramble", "Olive", "Pretzel", "Clementine", "Rusty", "Tofu", "Maple",
             "Gizmo"]  # fmt: skip
BREEDS = ["beagle", "border collie", "labrador", "dachshund", "corgi", "greyhound", "whippet"]
CITIES = ["Denver", "Lisbon", "Rotterdam", "Montreal", "Valencia", "Edinburgh", "Austin",
          "Leipzig", "Melbourne", "Porto", "Seattle", "Gothenburg", "Bologna", "Vancouver",
          "Krakow", "Lyon", "Minneapolis", "Dublin", "Tallinn", "Wellington"]  # fmt: skip
TOWNS = ["Cascais", "Whitby", "Hoi An", "Split", "Tromso", "Galway", "Sintra", "Brugge",
         "Hallstatt", "Kotor", "Ronda", "Trogir", "Dingle", "Positano"]  # fmt: skip
COMPANIES = ["Northwind Analytics", "Halvorsen Logistics", "Bluepeak Robotics", "Quillon Health",
             "Ferrovia Systems", "Tandem Biolabs", "Corvid Security", "Larkspur Media",
             "Meridian Freight", "Oakhollow Software", "Brightwater Energy", "Kestrel Aerospace",
             "Saltmarsh Games", "Veridian Insurance", "Pinecrest Foods",
             "Arbor Finance"]  # fmt: skip
BOOKS = ["The Salt Orchard", "A Map of Small Rooms", "Winter in Velden", "The Glass Cartographer",
         "Nine Quiet Rivers", "The Lantern Keeper's Daughter", "Borrowed Weather",
         "The Last Ferry to Oban"]  # fmt: skip
PLANS = ["Researching adoption agencies", "Learning to sail on the lake",
         "Repainting the whole flat", "Cycling along the Danube",
         "Volunteering at the animal shelter", "Finishing my thesis",
         "Building a treehouse for the kids", "Walking the Camino with my dad"]  # fmt: skip
INSTRUMENTS = ["cello", "trumpet", "banjo", "harp", "drums", "saxophone", "ukulele", "accordion"]
GIFTS = ["pottery class voucher", "hand-knitted scarf", "framed print of her old street",
         "weekend at a spa", "new bread maker", "small telescope"]  # fmt: skip
CAR_PARTS = ["gearbox", "clutch", "alternator", "timing belt", "radiator", "starter motor"]
ALLERGENS = [("peanuts", "satay"), ("shellfish", "prawn curry"), ("sesame", "hummus"),
             ("kiwi", "fruit salad"), ("cashews", "korma"), ("eggs", "carbonara")]  # fmt: skip
FOODS = ["pho", "ramen", "paella", "bibimbap", "lasagne", "shakshuka", "pad thai", "moussaka",
         "pierogi", "laksa", "risotto", "jambalaya"]  # fmt: skip
LANGUAGES = ["Portuguese", "Japanese", "Welsh", "Turkish", "Dutch", "Korean", "Greek"]
BUSINESSES = ["bakery", "bike repair shop", "wine bar", "bookshop", "dog grooming salon",
              "climbing gym"]  # fmt: skip
DEPARTMENTS = ["logistics", "customer support", "research", "sales", "design", "finance"]
RACES = ["Berlin marathon", "Ironman in Nice", "Tour du Mont Blanc trail race",
         "Chicago marathon", "Great North Run"]  # fmt: skip
PROFESSIONS = [("passed the bar exam", "lawyer"), ("finished the residency", "paediatrician"),
               ("got the pilot licence", "commercial pilot"), ("qualified as a vet", "vet"),
               ("got certified as an electrician", "electrician"),
               ("joined the fire brigade", "firefighter")]  # fmt: skip
SCHOOLS = ["Hillcrest Primary", "St Aidan's", "Riverside Academy", "Greenfield School",
           "Oak Lane Primary"]  # fmt: skip
PLAYS = ["The Wizard of Oz", "Peter Pan", "Matilda", "The Jungle Book", "Annie", "Oliver!"]
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]
# (what the user says they did, how a question asks about it: never the same words)
EVENTS = [("ran my first half marathon", "complete a half marathon"),
          ("passed my driving test", "get my driving licence"),
          ("had my wisdom tooth pulled", "have dental surgery"),
          ("sold the old Volvo", "get rid of my previous car"),
          ("signed the lease on the new studio", "commit to renting the studio"),
          ("got my braces off", "finish the orthodontic treatment"),
          ("handed in my dissertation", "submit my final university paper"),
          ("went to my first pottery class", "start learning ceramics"),
          ("adopted two rabbits", "bring home the bunnies"),
          ("got the keys to the allotment", "take over the garden plot")]  # fmt: skip

# --- small talk: around every fact, and between facts ---

OPENERS = ["Morning!", "Hey, quick one before my meeting.", "Sorry for the slow reply, crazy week.",
           "Ugh, Mondays.", "Back again, hi!", "Hi, it's pouring here today.",
           "Okay so, random update.", "Lunch break, finally.", "Can't sleep, so here I am.",
           "Hello again!", "Phew, what a day."]  # fmt: skip
CLOSERS = ["Anyway, how's your day?", "Also the coffee machine at work died again.", "lol",
           "Anyway, enough about me.", "Still can't quite believe it.",
           "The weather is not helping though.", "Need more tea.", "", "", ""]  # fmt: skip
ACKS = ["Oh nice, thanks for telling me!", "That's a lot going on.", "Ha, I hear you.",
        "Good to know!", "Sounds like quite a week!", "Love that.", "Wow, big news!",
        "That's great to hear."]  # fmt: skip
SMALL_TALK = [
    ("How's your week going?", "Pretty good, busy but good! Anything on your mind?"),
    ("Honestly just tired today.", "Those days happen. Be gentle with yourself."),
    ("It's so grey outside, I miss the sun.", "A short walk at lunch can help on grey days."),
    ("Do you ever get bored of my messages? haha", "Never! I like hearing how things are."),
    ("Just made way too much pasta again.", "Leftovers for tomorrow, then!"),
    ("My phone battery is dying all the time lately.", "Older batteries wear out, sadly."),
    ("Ok I need to go cook dinner, talk later.", "Enjoy your dinner! Talk soon."),
    ("The neighbours are having a party again.", "Earplugs might be your best friend tonight."),
    ("Finally watched that series everyone talks about.", "And? Worth the hype?"),
    ("Traffic was horrible this morning.", "Commutes like that are draining. Podcast helps?"),
]  # fmt: skip
LEADS = ["Ha, fair enough.", "I know the feeling.", "Oh no!", "Totally.", "Makes sense.", "Haha."]
GREETINGS = [("Hi!", "Hi! Good to hear from you again. How are things?"),
             ("Hey there", "Hey! How have you been?"),
             ("Good morning", "Good morning! What's new?"),
             ("Hello hello", "Hello! What's on your mind today?")]  # fmt: skip

Pair = tuple[str, str]


@dataclass
class _Statement:
    """Pairs to say in one session; ``marks`` names the turns that carry facts (pair, role)."""

    session: int
    pairs: list[Pair]
    marks: dict[str, tuple[int, str, bool]]  # mark -> (pair index, "user"|"assistant", echoed)


@dataclass
class _Ask:
    category: str
    fact: str
    text: str
    needs: tuple[str, ...]  # marks
    stale: str | None = None


@dataclass
class _Persona:
    """One persona's plan: statements per session and the questions about them."""

    user: str
    rng: random.Random
    dates: list[datetime]
    statements: list[_Statement] = field(default_factory=list)
    asks: list[_Ask] = field(default_factory=list)
    people: list[str] = field(default_factory=list)  # they come back in the small talk

    def person(self, gender: str) -> str:
        name = self.rng.choice([n for n in FIRST_NAMES[gender] if n not in self.people])
        self.people.append(name)
        return name

    def say(self, session: int, mark: str, fact: str, reply: str, echo: str = "") -> None:
        """One wrapped statement and the assistant's reply (an echo of it, sometimes)."""
        echoed = bool(echo) and self.rng.random() < ECHO
        pair = (self.wrap(fact), echo[:1].upper() + echo[1:] if echoed else reply)
        self.statements.append(_Statement(session, [pair], {mark: (0, "user", echoed)}))

    def wrap(self, fact: str) -> str:
        parts = (self.rng.choice(OPENERS), fact, self.rng.choice(CLOSERS))
        return " ".join(p for p in parts if p)

    def ask(self, category: str, fact: str, text: str, *needs: str, stale: str = "") -> None:
        self.asks.append(_Ask(category, fact, text, needs, stale or None))


# --- the six categories ---


def _single_hop(p: _Persona, n: int) -> None:
    rng = p.rng
    allergen, dish = rng.choice(ALLERGENS)
    km, rent, food, language = rng.randrange(15, 60, 5), rng.randrange(900, 2400, 50), \
        rng.choice(FOODS), rng.choice(LANGUAGES)  # fmt: skip
    kid, age, day = p.person("she"), rng.randint(4, 12), rng.randint(2, 28)
    birthday = f"{day} {rng.choice(MONTHS)}"
    facts: list[tuple[str, str, str, str, str]] = [
        ("allergy", f"The doctor confirmed I'm allergic to {allergen}, so no more {dish} for me.",
         f"Noted: no {allergen}.", "Always tell the waiter when you order.",
         "What food allergy did the doctor find?"),
        ("running", f"I've been doing about {km} kilometres a week since January.",
         f"{km} km a week is solid!", "Keep most of it at an easy pace.",
         "How far do I run each week?"),
        ("rent", f"Our landlord just put us up to {rent} euros a month.",
         f"{rent} euros, ouch.", "Check your lease before you agree to anything.",
         "How much do we pay for the apartment now?"),
        ("food", f"Nothing beats {food} on a rainy evening, I could eat it every day.",
         f"{food} is comfort in a bowl.", "Rainy-evening food is the best food.",
         "What's my favourite comfort meal?"),
        ("birthday", f"My daughter {kid} turns {age} on {birthday}, party at the park!",
         f"{kid}'s {age}th on {birthday}, lovely!", "Have a rain plan just in case.",
         f"When is {kid}'s birthday?"),
        ("language", f"I've started {language} lessons on the bus to work.",
         f"{language}, what a good choice!", "Little and often is the way with languages.",
         "Which language am I studying?"),
    ]  # fmt: skip
    for mark, said, echo, reply, question in rng.sample(facts, n):
        p.say(rng.randrange(SESSIONS), mark, said, reply, echo)
        p.ask("single-hop", mark, question, mark)


def _in_context(p: _Persona, n: int) -> None:
    rng = p.rng
    pet, part = rng.choice(PET_NAMES), rng.choice(CAR_PARTS)
    # (the assistant's question, the user's terse answer, the eval's question)
    exchanges: list[tuple[str, str, str, str]] = [
        ("plan", "What are your plans for the summer?", f"{rng.choice(PLANS)}, mostly.",
         "What am I planning to do this summer?"),
        ("interview", "How did the interview go?",
         f"Got it! I start at {rng.choice(COMPANIES)} in two weeks.",
         "Which company offered me the job after my interview?"),
        ("reading", "What are you reading these days?",
         f"{rng.choice(BOOKS)}. Second time, actually.", "Which book am I reading at the moment?"),
        ("instrument", "So which instrument did you pick in the end?",
         f"The {rng.choice(INSTRUMENTS)}. My neighbours will hate me.",
         "What instrument did I decide to learn?"),
        ("gift", "What did you get your mum for her birthday?",
         f"A {rng.choice(GIFTS)}. She loved it.", "What present did I give my mother?"),
        ("weekend", "Where are you off to for the long weekend?",
         f"{rng.choice(TOWNS)}, just the two of us.", "Where am I going for the long weekend?"),
        ("puppy", "How's the new puppy settling in? What did you name her?",
         f"{pet}! She already ate a sock.", "What's my puppy called?"),
        ("car", "What did the mechanic say about the car?",
         f"The {part} is shot. {rng.randrange(300, 1500, 50)} euros to fix.",
         "What was wrong with my car?"),
    ]  # fmt: skip
    for mark, prompt, answer, question in rng.sample(exchanges, n):
        opener = rng.choice(SMALL_TALK)[0]
        pairs = [(opener, f"{rng.choice(LEADS)} {prompt}"), (answer, rng.choice(ACKS))]
        p.statements.append(_Statement(rng.randrange(SESSIONS), pairs, {mark: (1, "user", False)}))
        p.ask("in-context", mark, question, mark)


def _names(p: _Persona, n: int) -> None:
    rng = p.rng
    for i in range(n):
        gender = rng.choice(sorted(FIRST_NAMES))
        name, relation = p.person(gender), rng.choice(RELATIONS)
        he, his = PRONOUNS[gender]
        facts = [
            ("moving", f"{he} is moving to {rng.choice(CITIES)} in the autumn to open a "
             f"{rng.choice(BUSINESSES)}.", f"Where is {name} moving to?"),
            ("dog", f"{he} just adopted a {rng.choice(BREEDS)} and called it "
             f"{rng.choice(PET_NAMES)}.", f"What is the name of {name}'s dog?"),
            ("promotion", f"{he} finally got promoted, head of {rng.choice(DEPARTMENTS)} now.",
             f"What was {name} promoted to?"),
            ("band", f"{his.capitalize()} band plays at the harbour festival next month, "
             f"{he.lower()}'s on {rng.choice(INSTRUMENTS)}.", f"What instrument does {name} play?"),
            ("race", f"{he} is training for the {rng.choice(RACES)}, up at five every morning.",
             f"Which race is {name} preparing for?"),
        ]  # fmt: skip
        fact, said, question = rng.choice(facts)
        intro = rng.choice([f"Had coffee with my {relation} {name} today.",
                            f"You remember {name}, my {relation}?",
                            f"Bumped into {name}, my {relation}, at the station."])  # fmt: skip
        pairs = [(p.wrap(intro), f"Oh, how is {he.lower()} doing?"), (said, rng.choice(ACKS))]
        mark = f"names{i}"
        p.statements.append(_Statement(rng.randrange(SESSIONS), pairs, {mark: (1, "user", False)}))
        p.ask("names", f"{fact}:{name}", question, mark)


def _relative(date: datetime, rng: random.Random) -> tuple[str, datetime]:
    """A relative date phrase and the day it means, seen from ``date``."""
    weekday = rng.randrange(7)
    back = (date.weekday() - weekday) % 7 or 7
    options = [
        ("Yesterday", 1),
        ("Two days ago", 2),
        (f"Last {_WEEKDAYS[weekday]}", back),
        ("Three days ago", 3),
    ]
    if back < 7:  # "on Monday", said on a Monday, would mean today
        options.append((f"On {_WEEKDAYS[weekday]}", back))
    phrase, days = rng.choice(options)
    return phrase, date - timedelta(days=days)


_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _temporal(p: _Persona, n: int) -> None:
    rng = p.rng
    for i, (did, asked) in enumerate(rng.sample(EVENTS, n)):
        session = rng.randrange(SESSIONS)
        phrase, day = _relative(p.dates[session], rng)
        mark = f"event{i}"
        p.say(session, mark, f"{phrase} I finally {did}!", rng.choice(ACKS))
        when = f"{_WEEKDAYS[day.weekday()]} {day.day} {day:%B %Y}"
        text = f"When did I {asked}?" if rng.random() < 0.5 else f"What did I do on {when}?"
        p.ask("temporal", did, text, mark)


def _multi_hop(p: _Persona, n: int) -> None:
    rng = p.rng
    sister, friend, kid = p.person("she"), p.person("he"), p.person("he")
    company, hq = rng.choice(COMPANIES), rng.choice(CITIES)
    school, play, did = rng.choice(SCHOOLS), rng.choice(PLAYS), rng.choice(PROFESSIONS)
    partner, town = p.person("she"), rng.choice(TOWNS)
    chains: list[tuple[str, tuple[str, str, str], tuple[str, str, str], str]] = [
        ("sister-hq", (f"My sister {sister} just got hired by {company}.",
                       f"Congrats to {sister}!", "Good news for your sister!"),
         (f"Read today that {company} has its headquarters in {hq}, in an old warehouse.",
          f"A warehouse office in {hq}, striking.", "Converted warehouses make great offices."),
         "In which city is my sister's employer based?"),
        ("friend-job", (f"My best friend {friend} and I went bouldering on Saturday.",
                        f"Bouldering with {friend}, fun!", "Sore forearms are normal at first."),
         (f"{friend} finally {did[0]}, so it's official: a {did[1]} now!",
          f"A {did[1]}, congratulations to {friend}!", "That takes years of work."),
         "What does my best friend do for a living?"),
        ("school-play", (f"{kid} started at {school} this week and he loved it.",
                         f"{school}, how exciting for {kid}!", "A good first week is a good sign."),
         (f"{school} is putting on {play} for the end-of-year show.",
          f"{play}, a classic!", "School shows are always so sweet."),
         "Which play is my son's school putting on?"),
        ("partner-town", (f"My wife {partner} surprised me with concert tickets for our "
                          "anniversary.", f"So thoughtful of {partner}!", "Happy anniversary!"),
         (f"{partner} grew up in {town}, we're visiting her parents there in "
          f"{rng.choice(MONTHS)}.", f"{town} sounds lovely.", "Family visits are a nice trip."),
         "Which town is my wife originally from?"),
    ]  # fmt: skip
    for name, first, second, question in rng.sample(chains, n):
        early, late = rng.randrange(SESSIONS // 2), rng.randrange(SESSIONS // 2, SESSIONS)
        p.say(early, f"{name}:a", first[0], first[2], first[1])
        p.say(late, f"{name}:b", second[0], second[2], second[1])
        p.ask("multi-hop", name, question, f"{name}:a", f"{name}:b")


def _updated(p: _Persona) -> None:
    rng = p.rng
    first, then = rng.sample(CITIES, 2)
    old, new = rng.sample(COMPANIES, 2)
    facts = [
        ("city", f"We finally moved to {first}! The flat is tiny but the cafes are great.",
         f"Packed everything up again, we're in {then} now. Boxes everywhere.",
         "Which city do I live in now?"),
        ("employer", f"Signed the offer from {old}, I start on Monday.",
         f"Handed in my notice at {old}, I'm joining {new} next month.",
         "Who is my current employer?"),
    ]  # fmt: skip
    fact, early, late, question = rng.choice(facts)
    p.say(rng.randrange(3), f"{fact}:old", early, rng.choice(ACKS))
    p.say(rng.randrange(SESSIONS - 3, SESSIONS), f"{fact}:new", late, rng.choice(ACKS))
    p.ask("updated", fact, question, f"{fact}:new", stale=f"{fact}:old")


# --- filler: chatter that shares the facts' vocabulary ---


def _lookalike(rng: random.Random) -> Pair:
    name = rng.choice(FIRST_NAMES[rng.choice(["she", "he"])])
    city, company, food = rng.choice(CITIES), rng.choice(COMPANIES), rng.choice(FOODS)
    options = [
        (f"My coworker {name} is moving to {city} next month, I'm a bit jealous.",
         f"{city} has a lot going for it! Would you consider moving?"),
        (f"{name} says the summer plans at work are all about the new office.",
         "Office moves in summer are common, fewer people around."),
        (f"I read that {company} is hiring a lot of engineers lately.",
         f"{company} seems to be growing fast. Thinking about applying?"),
        (f"We had {food} at a new place downtown, it was just okay.",
         "Not every new spot lands. Was it the flavour or the portion?"),
        (f"{name} recommended {rng.choice(BOOKS)}, maybe I'll read it one day.",
         "Recommendations from friends are often the best ones."),
        (f"If I ever get a dog I'd call it {rng.choice(PET_NAMES)}.", "That would be a fun name!"),
        (f"A friend of {name}'s plays the {rng.choice(INSTRUMENTS)} in a jazz trio.",
         "Jazz trios are so much fun to watch live."),
        (f"The mechanic down the road charges a fortune for a {rng.choice(CAR_PARTS)}.",
         "Always ask for a second quote on car repairs."),
        (f"My running club wants to do the {rng.choice(RACES)} next year.",
         "A group goal makes training much easier."),
        (f"Rent in {city} is insane, a friend pays {rng.randrange(900, 2400, 50)} a month.",
         f"Housing in {city} got very expensive."),
    ]  # fmt: skip
    return rng.choice(options)


# --- assembly ---


def build(personas: int = PERSONAS, seed: int = SEED) -> Dataset:
    data = Dataset()
    for n in range(personas):
        _persona(f"u{n:02d}", random.Random(seed * 1000 + n), data)
    return data


def _plan(user: str, rng: random.Random) -> _Persona:
    when = datetime(2024, 1, 8, 9, tzinfo=UTC) + timedelta(days=rng.randrange(120))
    dates = []
    for _ in range(SESSIONS):
        when += timedelta(days=rng.randrange(6, 21), hours=rng.randrange(-3, 9))
        dates.append(when)
    p = _Persona(user, rng, dates)
    _single_hop(p, 4)
    _in_context(p, 5)
    _names(p, 4)
    _temporal(p, 4)
    _multi_hop(p, 3)
    _updated(p)
    return p


def _persona(user: str, rng: random.Random, data: Dataset) -> None:
    p = _plan(user, rng)
    keys: dict[str, frozenset[str]] = {}
    for session, date in enumerate(p.dates):
        thread = f"{user}-s{session}"
        blocks = [s for s in p.statements if s.session == session]
        filler = max(1, PAIRS_PER_SESSION - 1 - sum(len(s.pairs) for s in blocks))
        blocks += [_Statement(session, [pair], {}) for pair in _chatter(p, filler)]
        rng.shuffle(blocks)
        blocks.insert(0, _Statement(session, [rng.choice(GREETINGS)], {}))
        t = 0
        for block in blocks:
            for index, (said, reply) in enumerate(block.pairs):
                ukey, akey = f"{user}/s{session}/t{t}", f"{user}/s{session}/t{t + 1}"
                moment = date + timedelta(minutes=2 * t)
                data.turns.append(Turn(ukey, user, thread, "user", said, moment))
                data.turns.append(
                    Turn(akey, user, thread, "assistant", reply, moment + timedelta(seconds=40))
                )
                for mark, (at, role, echoed) in block.marks.items():
                    if at == index:
                        own = ukey if role == "user" else akey
                        keys[mark] = frozenset([ukey, akey] if echoed else [own])
                t += 2
    for a in p.asks:
        stale = keys[a.stale] if a.stale else frozenset()
        gold = tuple(keys[m] for m in a.needs)
        data.questions.append(Question(user, a.category, a.fact, a.text, gold, stale))


def _chatter(p: _Persona, n: int) -> list[Pair]:
    """``n`` different pairs of chatter for one session."""
    pairs: list[Pair] = []
    while len(pairs) < n:
        pair = _chat(p)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def _chat(p: _Persona) -> Pair:
    """Small talk, look-alike chatter, or a passing mention of someone the persona knows."""
    draw = p.rng.random()
    if draw < 0.35:
        return p.rng.choice(SMALL_TALK)
    if draw < 0.65 or not p.people:
        return _lookalike(p.rng)
    name = p.rng.choice(p.people)
    return p.rng.choice([
        (f"{name} sent me the funniest video today.", "Ha, sounds like a good friend to have."),
        (f"Seeing {name} this weekend, finally.", "Nice, enjoy the catch-up!"),
        (f"{name} says hi, by the way.", "Hi back! That's sweet."),
        (f"{name} has been so busy lately, we barely talk.", "Busy phases pass."),
        (f"Had a silly argument with {name} about pineapple on pizza.", "The eternal debate!"),
        (f"{name} is coming over for dinner on Thursday.", "Lovely. Cooking something special?"),
    ])  # fmt: skip
