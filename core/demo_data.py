"""Demo content for `make run`: a publisher with a few packs, and a demo user who installed one."""

from typing import Any

PUBLISHER = {"org": "acme-experts", "slug": "acme-experts", "name": "ACME Experts"}

PACKS: list[dict[str, Any]] = [
    {
        "slug": "python-pitfalls",
        "title": "Python Pitfalls",
        "description": "Hard-won lessons about Python gotchas, for coding agents.",
        "summary": "Eight Python gotchas every coding agent should know.",
        "category": "programming",
        "readme": "# Python Pitfalls\n\nShort, checked lessons about the traps of the language: mutable "
        "defaults, late binding, identity versus equality, floating point.\n",
        "tags": ["programming", "python"],
        "questions": [
            ("Why does my default list argument keep growing?", 0),
            ("Why is 0.1 + 0.2 not equal to 0.3?", 4),
        ],
        "memories": [
            "Mutable default arguments are evaluated once at function definition; use None and create the list "
            "inside the function.",
            "Late binding in closures: lambdas in a loop capture the variable, not its value; bind it with a "
            "default argument.",
            "`is` compares identity, not equality; small integers are cached, so `is` may appear to work on them.",
            "Modifying a list while iterating over it skips elements; iterate over a copy or build a new list.",
            "Floating point: 0.1 + 0.2 != 0.3; compare with math.isclose or use decimal.Decimal for money.",
            "A bare `except:` also catches KeyboardInterrupt and SystemExit; catch Exception instead.",
            "Dictionaries keep insertion order since Python 3.7; sets do not keep any order.",
            "The GIL means CPU-bound threads do not run Python bytecode in parallel; use processes for CPU work.",
        ],
    },
    {
        "slug": "eu-travel-facts",
        "title": "EU Travel Facts",
        "description": "Practical, dated facts for travel agents planning trips in Europe.",
        "summary": "Visas, trains and customs for agents planning European trips.",
        "category": "travel",
        "readme": "# EU Travel Facts\n\nA monthly subscription: facts are kept current as rules change.\n",
        "tags": ["travel", "europe"],
        "price_model": "subscription",
        "price_cents": 900,
        "quota_per_period": 10_000,
        "memories": [
            "The Schengen area lets travellers cross internal borders without passport checks.",
            "Short-stay visitors to Schengen may stay 90 days in any 180-day period.",
            "Trains between Paris and London run through the Channel Tunnel in about 2 hours 20 minutes.",
            "Tipping in Germany is usually done by rounding up or adding about 5 to 10 percent.",
            "Most museums in Paris are free for EU residents under 26.",
            "Spain has a long lunch break: many small shops close between 2 pm and 5 pm.",
        ],
    },
    {
        "slug": "kitchen-basics",
        "title": "Kitchen Basics",
        "description": "Cooking fundamentals: temperatures, ratios and food safety.",
        "summary": "Temperatures, ratios and food safety for kitchen assistants.",
        "category": "cooking",
        "readme": "# Kitchen Basics\n\nOne payment, yours for good. Limited to 100 licences.\n",
        "tags": ["cooking"],
        "price_model": "one_time",
        "price_cents": 499,
        "seat_limit": 100,
        "memories": [
            "Chicken is safe to eat when its thickest part reaches 74 degrees Celsius (165 Fahrenheit).",
            "A basic vinaigrette is three parts oil to one part vinegar, plus salt and mustard to emulsify.",
            "Rest a steak for about five minutes after cooking so its juices redistribute.",
            "Salt pasta water generously: about 10 grams of salt per litre.",
        ],
    },
]

# A pack authored by uploading a document (chunked along its headings), priced per 1,000 retrievals.
DOCUMENT_PACK: dict[str, Any] = {
    "slug": "warehouse-handbook",
    "title": "Warehouse Handbook",
    "description": "How a small warehouse runs: hours, returns, fragile goods.",
    "summary": "Operating procedures for logistics agents, from one uploaded handbook.",
    "category": "logistics",
    "tags": ["logistics"],
    "price_model": "metered",
    "price_cents": 50,
    "filename": "warehouse-handbook.md",
    "document": """# Warehouse handbook

## Opening hours

The warehouse opens at seven in the morning and closes early on public holidays.

## Returns

Returned goods are inspected within three working days and refunded when they are undamaged.

## Fragile goods

Fragile items are packed in double boxes with plenty of paper padding around them.
""",
}

DEMO_USER = {"username": "demo", "password": "memhub-demo-password"}

PRIVATE_MEMORIES = [
    "I prefer answers with code examples in Python.",
    "My team deploys on Fridays only after the 3 pm stand-up.",
    "Project Falcon's launch moved from May to June 2025.",
]

# What the demo user's feed subscription shows: the publisher revises one memory, adds one and retracts
# one after the release; the demo user's installation applies all three (new versions, watermarked).
FEED_UPDATES = {
    "pack": "python-pitfalls",
    "revise": (
        "The GIL means",
        "The GIL means CPU-bound threads do not run Python bytecode in parallel, except on the free-threaded "
        "build of Python 3.13 and later (python3.13t); elsewhere use processes for CPU work.",
    ),
    "add": "Since Python 3.12, f-strings may reuse the enclosing quote character and span several lines.",
    "retract": (
        "asyncio.get_event_loop() creates an event loop when none is running.",
        "Deprecated since Python 3.12: get_event_loop() no longer creates a loop; use asyncio.run().",
    ),
}
