"""The recall eval's data: generated multi-session conversations and questions about them.

Deterministic (one seed), built by code, nothing downloaded. Each persona (an end user) talks to
the assistant over ``SESSIONS`` threads spread over months. Early sessions state facts (a pet, a
partner, an allergy, a trip, numbers...) among filler that reuses the facts' vocabulary: other
people's pets, cities a coworker moves to, hypothetical names, companies in the news. Later
sessions update two facts (a second move, a new job) and state the second half of the
multi-hop chains. The questions, which are not ingested, come in four categories:

    single      shares a distinctive word with the statement ("What did we call the beagle...")
    paraphrase  shares no content word with it ("What's my dog's name?" vs "...called him Waffles")
    multi-hop   needs two statements ("Where is my sister's employer headquartered?")
    updated     asks for the current value of a fact stated twice; only the latest is gold

A question's gold is one group of turn keys per fact it needs (the user's statement, plus the
assistant's reply when that repeats the value).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

SEED = 20251122
PERSONAS = 40
SESSIONS = 8
PAIRS_PER_SESSION = 5  # user + assistant: 10 turns a session


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
    gold: tuple[frozenset[str], ...]  # one group of acceptable turn keys per fact needed
    stale: frozenset[str] = frozenset()  # superseded statements (updated questions)


@dataclass
class Dataset:
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


# --- vocabulary pools (fictional companies and people; real places and foods) ---

FIRST_NAMES = [
    "Priya", "Daniel", "Sofia", "Marco", "Leila", "Tomasz", "Aisha", "Jonas", "Mei", "Rafael",
    "Ingrid", "Kwame", "Elena", "Hugo", "Noor", "Felix", "Camila", "Oren", "Yuki", "Dmitri",
    "Amara", "Lukas", "Zara", "Mateo", "Freya", "Idris", "Clara", "Ravi", "Astrid", "Bruno",
]  # fmt: skip
PET_NAMES = [
    "Waffles", "Biscuit", "Pepper", "Juniper", "Ziggy", "Mochi", "Pickle", "Noodle", "Bramble",
    "Olive", "Pretzel", "Clementine", "Rusty", "Tofu", "Maple", "Gizmo", "Sprout", "Nacho",
]  # fmt: skip
PETS = {
    "dog": ["beagle", "border collie", "labrador", "dachshund", "corgi", "greyhound", "whippet"],
    "cat": ["tabby", "Maine Coon", "Siamese", "ragdoll", "Bengal", "Persian"],
}
PARTNER_ROLES = [("wife", "she", "her"), ("husband", "he", "his"), ("girlfriend", "she", "her"),
                 ("boyfriend", "he", "his")]  # fmt: skip
CITIES = [
    "Denver", "Lisbon", "Rotterdam", "Montreal", "Valencia", "Edinburgh", "Austin", "Leipzig",
    "Melbourne", "Porto", "Seattle", "Gothenburg", "Bologna", "Vancouver", "Krakow", "Lyon",
    "Minneapolis", "Dublin", "Tallinn", "Wellington",
]  # fmt: skip
HOMETOWNS = [
    "Cascais", "Whitby", "Hoi An", "Split", "Tromso", "Galway", "Sintra", "Brugge", "Hallstatt",
    "Kotor", "Ronda", "Trogir", "Dingle", "Positano",
]  # fmt: skip
COMPANIES = [
    "Northwind Analytics", "Halvorsen Logistics", "Bluepeak Robotics", "Quillon Health",
    "Ferrovia Systems", "Tandem Biolabs", "Corvid Security", "Larkspur Media", "Meridian Freight",
    "Oakhollow Software", "Brightwater Energy", "Kestrel Aerospace", "Lumen Dental",
    "Saltmarsh Games", "Veridian Insurance", "Pinecrest Foods", "Copperline Telecom",
    "Arbor Finance",
]  # fmt: skip
JOBS = ["data analyst", "product designer", "backend engineer", "project manager",
        "UX researcher", "account manager", "QA lead", "marketing specialist"]  # fmt: skip
PROFESSIONS = [
    ("passed the bar exam", "lawyer"), ("finished the medical residency", "paediatrician"),
    ("got the pilot licence", "commercial pilot"), ("opened a bakery downtown", "baker"),
    ("qualified as a vet", "veterinarian"), ("got certified as an electrician", "electrician"),
    ("started teaching at the high school", "chemistry teacher"),
    ("joined the fire brigade", "firefighter"),
]  # fmt: skip
ALLERGENS = [("peanuts", "satay"), ("shellfish", "prawn curry"), ("sesame", "hummus"),
             ("kiwi", "fruit salad"), ("cashews", "korma"), ("eggs", "carbonara"),
             ("strawberries", "smoothies"), ("mustard", "vinaigrette")]  # fmt: skip
FOODS = ["pho", "ramen", "paella", "bibimbap", "lasagne", "shakshuka", "pad thai",
         "moussaka", "pierogi", "laksa", "risotto", "jambalaya"]  # fmt: skip
TRIPS = [
    ("Kyoto", "walking between temples"), ("Reykjavik", "chasing the northern lights"),
    ("Marrakesh", "getting lost in the souks"), ("Cusco", "hiking up to Machu Picchu"),
    ("Hanoi", "eating street food"), ("Tbilisi", "tasting wine"),
    ("Queenstown", "bungee jumping and hiking"), ("Cape Town", "surfing"),
    ("Oaxaca", "learning to cook mole"), ("Istanbul", "visiting bazaars and mosques"),
]  # fmt: skip
MONTHS = ["March", "April", "May", "June", "July", "August", "September", "October"]
KID_ROLES = [("daughter", "she"), ("son", "he")]


# --- facts: statements and their questions ---


@dataclass
class _Facts:
    """One persona's values."""

    species: str
    breed: str
    pet: str
    role: str
    pronoun: str
    possessive: str
    partner: str
    hometown: str
    city1: str
    city2: str
    company1: str
    job1: str
    company2: str
    job2: str
    sister: str
    sister_company: str
    hq: str
    friend: str
    did: str
    profession: str
    allergen: str
    allergen_dish: str
    food: str
    trip: str
    activity: str
    month: str
    kid_role: str
    kid_pronoun: str
    kid: str
    age: int
    birthday: str
    km: int
    rent: int


def _facts(rng: random.Random) -> _Facts:
    species = rng.choice(sorted(PETS))
    role, pronoun, possessive = rng.choice(PARTNER_ROLES)
    people = rng.sample(FIRST_NAMES, 4)
    city1, city2, hq = rng.sample(CITIES, 3)
    company1, company2, sister_company = rng.sample(COMPANIES, 3)
    job1, job2 = rng.sample(JOBS, 2)
    did, profession = rng.choice(PROFESSIONS)
    allergen, dish = rng.choice(ALLERGENS)
    trip, activity = rng.choice(TRIPS)
    kid_role, kid_pronoun = rng.choice(KID_ROLES)
    day = rng.randint(2, 28)
    return _Facts(
        species, rng.choice(PETS[species]), rng.choice(PET_NAMES), role, pronoun, possessive,
        people[0], rng.choice(HOMETOWNS), city1, city2, company1, job1, company2, job2,
        people[1], sister_company, hq, people[2], did, profession, allergen, dish,
        rng.choice(FOODS), trip, activity, rng.choice(MONTHS), kid_role, kid_pronoun, people[3],
        rng.randint(4, 12), f"{day} {rng.choice(MONTHS)}", rng.randrange(15, 60, 5),
        rng.randrange(900, 2400, 50),
    )  # fmt: skip


@dataclass(frozen=True)
class _Statement:
    """A fact as the user states it, the assistant's reply, and whether the reply repeats it."""

    fact: str
    user: str
    assistant: str
    echoes: bool


def _statements(f: _Facts, rng: random.Random) -> dict[str, _Statement]:
    def s(fact: str, user: str, echo: str, plain: str) -> _Statement:
        echoes = rng.random() < 0.5
        return _Statement(fact, user, echo if echoes else plain, echoes)

    return {
        "pet": s("pet",
                 f"Big news: we finally adopted a {f.breed} from the shelter and called him "
                 f"{f.pet}. He already chewed one of my slippers.",
                 f"{f.pet} is a lovely name for a {f.breed}! The first weeks are an adjustment; "
                 "a fixed routine helps a lot.",
                 "Congratulations on the adoption! The first weeks are an adjustment; a fixed "
                 "routine and a few chew toys help a lot."),
        "partner": s("partner",
                     f"My {f.role} {f.partner} surprised me with concert tickets for our "
                     "anniversary, I did not see that coming.",
                     f"That's so thoughtful of {f.partner}! Happy anniversary to you both.",
                     "What a thoughtful surprise, happy anniversary! Which band are you seeing?"),
        "hometown": s("hometown",
                      f"{f.partner} grew up in {f.hometown}, and we visit {f.possessive} "
                      "parents there every summer.",
                      f"{f.hometown} sounds like a beautiful place to spend the summers.",
                      "Summer visits to family are a nice tradition. Do you enjoy the trips?"),
        "city1": s("city1",
                   f"We finally moved to {f.city1}! The flat is tiny but the neighbourhood "
                   "has great cafes.",
                   f"Welcome to {f.city1}! Small flats get cosy quickly with the right storage.",
                   "Congrats on the move! Small flats get cosy quickly with the right storage."),
        "city2": s("city2",
                   f"Update: we packed everything up again and relocated to {f.city2} last "
                   "weekend. Boxes everywhere.",
                   f"Another move already! I hope you settle into {f.city2} quickly.",
                   "Another move already! Unpack the kitchen and the bed first, the rest can "
                   "wait."),
        "job1": s("job1",
                  f"I signed the offer from {f.company1}! I start as a {f.job1} on Monday.",
                  f"Congratulations on joining {f.company1}! First weeks as a {f.job1} are "
                  "mostly listening.",
                  "Congratulations on the offer! The first weeks in a new role are mostly "
                  "listening and asking questions."),
        "job2": s("job2",
                  f"I handed in my notice at {f.company1} and accepted a {f.job2} position at "
                  f"{f.company2}.",
                  f"A fresh start at {f.company2}, exciting! Leave on good terms with your old "
                  "team.",
                  "Exciting change! Try to leave on good terms with your old team."),
        "sister": s("sister",
                    f"My sister {f.sister} just got hired by {f.sister_company} to join their "
                    "design team.",
                    f"Please pass my congratulations to {f.sister}; {f.sister_company} is lucky "
                    "to have her.",
                    "That's wonderful news for your sister! Design teams are fun to join."),
        "hq": s("hq",
                f"Fun fact I read today: {f.sister_company} has its headquarters in {f.hq}, in "
                "an old warehouse by the river.",
                f"A warehouse conversion in {f.hq} sounds like a striking office.",
                "Converted warehouses make striking offices."),
        "friend": s("friend",
                    f"My best friend {f.friend} and I went bouldering on Saturday, my arms "
                    "still hurt.",
                    f"Bouldering with {f.friend} sounds fun! Sore forearms are normal.",
                    "Bouldering is a great workout! Sore forearms are normal at first."),
        "profession": s("profession",
                        f"{f.friend} finally {f.did}, so it's official: a {f.profession} now!",
                        f"Congratulations to {f.friend}, becoming a {f.profession} takes "
                        "years.",
                        "That's a big milestone, it takes years of work to get there."),
        "allergy": s("allergy",
                     f"The doctor confirmed I'm allergic to {f.allergen}, so no more "
                     f"{f.allergen_dish} for me.",
                     f"Good to know about the {f.allergen}. Always tell the waiter when you "
                     "order.",
                     "Good that you found out. Always tell the waiter when you order."),
        "food": s("food",
                  f"Honestly nothing beats {f.food} on a rainy evening, I could eat it every "
                  "single day.",
                  f"{f.food} is comfort in a bowl. Have you tried making it from scratch?",
                  "Comfort food on a rainy evening is hard to beat!"),
        "trip": s("trip",
                  f"In {f.month} we flew to {f.trip} and spent a whole week {f.activity}.",
                  f"A week in {f.trip} sounds unforgettable!",
                  "That sounds like an unforgettable week away!"),
        "birthday": s("birthday",
                      f"My {f.kid_role} {f.kid} turns {f.age} on {f.birthday}, we are "
                      "planning a party at the park.",
                      f"A park party for {f.kid}'s {f.age}th on {f.birthday}, lovely! Have a "
                      "rain plan.",
                      "A party in the park sounds lovely! Have a rain plan just in case."),
        "running": s("running",
                     f"I've been running about {f.km} kilometres a week since January and my "
                     "knees feel fine.",
                     f"{f.km} km a week is solid, keep most of it at an easy pace.",
                     "That's solid consistency, keep most of it at an easy pace."),
        "rent": s("rent",
                  f"Our rent just went up to {f.rent} euros a month, the landlord gave us two "
                  "weeks notice.",
                  f"{f.rent} euros is a steep jump on two weeks notice; check your lease.",
                  "Two weeks notice for a rent increase is short; check your lease terms."),
    }  # fmt: skip


# Facts with a single-fact question: (single: shares a distinctive word, paraphrase: does not).
_ASKED: dict[str, tuple[Callable[[_Facts], str], Callable[[_Facts], str]]] = {
    "pet": (lambda f: f"What did we call the {f.breed} we adopted from the shelter?",
            lambda f: f"What's the name of my {f.species}?"),
    "partner": (lambda f: f"What is my {f.role}'s name?",
                lambda f: "Who is my significant other?"),
    "allergy": (lambda f: "What did the doctor say I'm allergic to?",
                lambda f: "Is there any ingredient I have to avoid for medical reasons?"),
    "food": (lambda f: "Which dish could I eat every single day?",
             lambda f: "What's my favourite meal?"),
    "trip": (lambda f: f"Where did we fly to in {f.month}?",
             lambda f: "Where did I go on holiday this year?"),
    "birthday": (lambda f: f"When does {f.kid} turn {f.age}?",
                 lambda f: f"What date was my {f.kid_role} born?"),
    "running": (lambda f: "How many kilometres a week have I been running?",
                lambda f: "What's my weekly training mileage?"),
    "rent": (lambda f: "How much rent do we pay now?",
             lambda f: "What does our apartment cost us monthly?"),
}  # fmt: skip
_MULTI_HOP: dict[str, tuple[tuple[str, str], Callable[[_Facts], str]]] = {
    "sister-hq": (("sister", "hq"),
                  lambda f: "In which city does my sister's employer have its HQ?"),
    "partner-hometown": (("partner", "hometown"),
                         lambda f: f"Which town is my {f.role} originally from?"),
    "friend-job": (("friend", "profession"), lambda f: "What does my best friend do for a living?"),
}  # fmt: skip
_UPDATED: dict[str, tuple[str, str, Callable[[_Facts], str]]] = {
    "city": ("city2", "city1", lambda f: "Which city do I live in now?"),
    "employer": ("job2", "job1", lambda f: "Who is my current employer?"),
}

# Session (0-based) in which each statement is made; None: a random early session (0-4).
_SESSION: dict[str, int | None] = {
    "city1": 0, "job1": 0, "partner": None, "pet": None, "sister": None, "friend": None,
    "allergy": None, "food": None, "trip": None, "birthday": None, "running": None,
    "rent": None, "hometown": 4, "hq": 5, "profession": 5, "city2": 6, "job2": 7,
}  # fmt: skip


# --- filler: chit-chat that shares the facts' vocabulary ---


def _filler(rng: random.Random, f: _Facts) -> tuple[str, str]:
    name = rng.choice(FIRST_NAMES)
    city = rng.choice(CITIES)
    breed = rng.choice(PETS["dog"] + PETS["cat"])
    pet = rng.choice(PET_NAMES)
    company = rng.choice(COMPANIES)
    food = rng.choice(FOODS)
    trip, _ = rng.choice(TRIPS)
    options = [
        (f"The {breed} next door barked all night again, I barely slept.",
         "That's exhausting. Earplugs or white noise can help, and a friendly word with the "
         "neighbours might too."),
        (f"My coworker {name} is moving to {city} next month and I'm a bit jealous.",
         f"{city} has a lot going for it! Is moving something you'd consider yourself?"),
        (f"I tried to cook {food} at home last night but it came out bland.",
         "Usually it's salt and acidity. Season in layers and finish with something sour."),
        ("Work was exhausting today, back-to-back meetings about the new office layout.",
         "Meeting-heavy days drain everyone. Can you block focus time on your calendar?"),
        ("My sister called and we talked for an hour about absolutely nothing.",
         "Those long chats are the best kind of catching up."),
        ("Pollen season is brutal this year, my eyes won't stop itching.",
         "Antihistamines and keeping windows shut in the morning help with hay fever."),
        (f"My friend {name} adopted a {breed} and called her {pet}. So cute.",
         f"{pet} is an adorable name! Are you tempted to get a pet too?"),
        (f"If we ever get a puppy I want to call it {pet}.",
         f"{pet} would be a fun name for a puppy!"),
        (f"I watched a documentary about {trip} yesterday, the food looked amazing.",
         f"{trip} is on a lot of travel lists. Would you like to go one day?"),
        ("Do you think I should start running again? My knees feel a bit stiff.",
         "Start slowly: short easy runs, and strength work for the knees."),
        (f"The rent in {city} is insane, a friend pays {rng.randrange(900, 2400, 50)} euros a "
         "month for a studio.",
         f"Housing in {city} has become very expensive, like in most big cities."),
        (f"I read that {company} is hiring a lot of engineers lately.",
         f"{company} seems to be growing fast. Are you thinking about applying?"),
        ("What's a quick dinner I can make with chickpeas and spinach?",
         "A chickpea and spinach curry: onion, garlic, spices, tomatoes, 20 minutes."),
        ("The weather has been gloomy all week, I really need a holiday.",
         "A few days somewhere sunny could do wonders. Any destination in mind?"),
        ("Can you help me write an email to my landlord about the broken heater?",
         "Sure: describe the problem, when it started, and ask for a repair date in writing."),
        ("Any tips for organising a birthday party for a group of kids?",
         "Keep it short, plan two or three games, and have plenty of snacks."),
        ("Explain how compound interest works, in simple terms.",
         "You earn interest on your interest: each period's gain is added to the balance."),
        ("What's a good stretching routine after a long run?",
         "Calves, hamstrings, quads and hip flexors, 30 seconds each, breathing slowly."),
        (f"My old colleague from {company} says the office moved to {city}.",
         f"Office moves shake things up. Does it change anything for your colleague in {city}?"),
        (f"I'm reading a novel set in {city}, it makes me want to visit.",
         "Books set in real cities are the best travel guides. What's it called?"),
        (f"We had {food} at a new place downtown, it was just okay.",
         "Not every new spot lands. Was it the flavour or the portion?"),
        (f"My {f.role} wants to redo the kitchen but I think it's too expensive.",
         "Kitchen renovations add up fast. Get two or three quotes before deciding."),
        ("I keep forgetting to drink water during the day, any tricks?",
         "Keep a bottle on your desk and refill it at fixed times."),
        (f"A friend recommended a restaurant in {city} with amazing {food}.",
         "Good recommendations from friends are gold. Save it for your next visit."),
        ("Should I learn Spanish or Portuguese first?",
         "Pick the one you'll practise most; the other comes easier afterwards."),
    ]  # fmt: skip
    return rng.choice(options)


# --- assembly ---


def build(personas: int = PERSONAS, seed: int = SEED) -> Dataset:
    data = Dataset()
    for p in range(personas):
        rng = random.Random(seed * 1000 + p)
        _persona(f"u{p:02d}", rng, data)
    return data


def _persona(user: str, rng: random.Random, data: Dataset) -> None:
    f = _facts(rng)
    statements = _statements(f, rng)
    plan: dict[int, list[_Statement]] = {s: [] for s in range(SESSIONS)}
    for fact, session in _SESSION.items():
        plan[session if session is not None else rng.randrange(5)].append(statements[fact])
    start = datetime(2024, 1, 8, 9, tzinfo=UTC) + timedelta(days=rng.randrange(120))
    keys: dict[str, frozenset[str]] = {}
    when = start
    for session in range(SESSIONS):
        when += timedelta(days=rng.randrange(9, 26), hours=rng.randrange(-3, 9))
        thread = f"{user}-s{session}"
        pairs = _session_pairs(plan[session], rng, f)
        for t, (said, reply, statement) in enumerate(pairs):
            ukey, akey = f"{user}/s{session}/t{2 * t}", f"{user}/s{session}/t{2 * t + 1}"
            moment = when + timedelta(minutes=4 * t)
            data.turns.append(Turn(ukey, user, thread, "user", said, moment))
            data.turns.append(
                Turn(akey, user, thread, "assistant", reply, moment + timedelta(seconds=40))
            )
            if statement is not None:
                keys[statement.fact] = frozenset([ukey, akey] if statement.echoes else [ukey])
    data.questions.extend(_questions(user, f, keys, rng))


def _session_pairs(
    statements: list[_Statement], rng: random.Random, f: _Facts
) -> list[tuple[str, str, _Statement | None]]:
    pairs: list[tuple[str, str, _Statement | None]] = [(s.user, s.assistant, s) for s in statements]
    seen: set[str] = set()
    while len(pairs) < PAIRS_PER_SESSION:
        said, reply = _filler(rng, f)
        if said not in seen:
            seen.add(said)
            pairs.append((said, reply, None))
    rng.shuffle(pairs)
    return pairs


def _questions(
    user: str, f: _Facts, keys: dict[str, frozenset[str]], rng: random.Random
) -> Iterator[Question]:
    asked = sorted(_ASKED)
    rng.shuffle(asked)
    for n, fact in enumerate(asked):
        single, paraphrase = _ASKED[fact]
        if n % 2 == 0:
            yield Question(user, "single", fact, single(f), (keys[fact],))
        else:
            yield Question(user, "paraphrase", fact, paraphrase(f), (keys[fact],))
    for name, (needs, ask) in _MULTI_HOP.items():
        yield Question(user, "multi-hop", name, ask(f), tuple(keys[n] for n in needs))
    for name, (latest, old, ask) in _UPDATED.items():
        yield Question(user, "updated", name, ask(f), (keys[latest],), stale=keys[old])
