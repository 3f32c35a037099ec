#!/usr/bin/env python3
"""A synthetic English->German corpus of numbers, times and dates: lstmmt's default data.

Why synthetic: the toolkit needs data that downloads nothing, generates in a second and
still takes real translation to get right. German writes a number as one word with the
units before the tens ("forty-five" -> "fünfundvierzig"), tells the time by the coming
hour ("half past seven" -> "halb acht"), inflects ordinals by case ("der dritte Mai",
"am dritten Mai") and sends participles and verb particles to the end of the sentence
("the train leaves at seven o'clock" -> "der Zug fährt um sieben Uhr ab"). The vocabulary
stays small, so a small LSTM learns the corpus in minutes and a low BLEU points at a bug
in the model, the search or the training loop rather than at the data.

Every English line has exactly one German translation, and the splits share no English
line. Standard library only, so it runs before the package is installed:

    python data/toy.py OUTDIR [--train N] [--valid N] [--test N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable
from pathlib import Path

Pair = tuple[str, str]
"""An English sentence and its German translation."""

Frame = tuple[str, str]
"""English and German sentence templates with the same named slots (str.format style)."""

# ---------------------------------------------------------------------------------------
# Numbers

EN_SMALL = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
DE_SMALL = (
    "null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn "
    "vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn"
).split()
EN_TENS = dict(zip(range(2, 10), "twenty thirty forty fifty sixty seventy eighty ninety".split()))
DE_TENS = dict(zip(range(2, 10), "zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()))


def en_number(n: int) -> str:
    """English words for 0 <= n <= 9999, British style: 345 -> "three hundred and forty-five"."""
    _check_range(n, 0, 9999)
    if n < 100:
        return _en_below_100(n)
    thousands, hundreds, rest = n // 1000, n // 100 % 10, n % 100
    parts = []
    if thousands:
        parts.append(f"{EN_SMALL[thousands]} thousand")
    if hundreds:
        parts.append(f"{EN_SMALL[hundreds]} hundred")
    if rest:
        parts.append(f"and {_en_below_100(rest)}")
    return " ".join(parts)


def de_number(n: int) -> str:
    """German for 0 <= n <= 9999 as one word, the form used when counting or naming a number.

    A final lone 1 is "eins" (101 -> "einhunderteins"); a 1 inside the word is "ein"
    (21 -> "einundzwanzig", 100 -> "einhundert").
    """
    _check_range(n, 0, 9999)
    if n == 0:
        return "null"
    thousands, hundreds, rest = n // 1000, n // 100 % 10, n % 100
    word = ""
    if thousands:
        word += _de_combining(thousands) + "tausend"
    if hundreds:
        word += _de_combining(hundreds) + "hundert"
    if rest:
        word += _de_below_100(rest)
    return word


def en_year(year: int) -> str:
    """How English reads a year from 1100 to 2099: "nineteen eighty-four", "nineteen oh five",
    "two thousand and five", "twenty twenty-one"."""
    _check_range(year, 1100, 2099)
    if 2000 <= year < 2010:
        return en_number(year)
    century, rest = divmod(year, 100)
    if rest == 0:
        return f"{_en_below_100(century)} hundred"
    if rest < 10:
        return f"{_en_below_100(century)} oh {EN_SMALL[rest]}"
    return f"{_en_below_100(century)} {_en_below_100(rest)}"


def de_year(year: int) -> str:
    """German reads years before 2000 in hundreds ("neunzehnhundertvierundachtzig") and
    later ones as plain numbers ("zweitausendeinundzwanzig")."""
    _check_range(year, 1100, 2099)
    if year >= 2000:
        return de_number(year)
    century, rest = divmod(year, 100)
    return DE_SMALL[century] + "hundert" + (_de_below_100(rest) if rest else "")


def _en_below_100(n: int) -> str:
    if n < 20:
        return EN_SMALL[n]
    tens, units = divmod(n, 10)
    return EN_TENS[tens] + (f"-{EN_SMALL[units]}" if units else "")


def _de_below_100(n: int) -> str:
    """1..99 with the units first: 45 -> "fünfundvierzig"."""
    if n < 20:
        return DE_SMALL[n]
    tens, units = divmod(n, 10)
    return (f"{_de_combining(units)}und" if units else "") + DE_TENS[tens]


def _de_combining(n: int) -> str:
    """The form of a number inside a compound or before a noun: 1 is "ein", not "eins"."""
    return "ein" if n == 1 else de_number(n)


def _check_range(n: int, low: int, high: int) -> None:
    if not low <= n <= high:
        raise ValueError(f"{n} is outside {low}..{high}")


# ---------------------------------------------------------------------------------------
# Ordinals

EN_ORDINAL_SMALL = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
    "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()
DE_ORDINAL_IRREGULAR = {1: "erst", 3: "dritt", 7: "siebt", 8: "acht"}


def en_ordinal(n: int) -> str:
    """English ordinal for 1..99: "third", "twentieth", "twenty-first"."""
    _check_range(n, 1, 99)
    if n < 20:
        return EN_ORDINAL_SMALL[n]
    tens, units = divmod(n, 10)
    if units == 0:
        return EN_TENS[tens][:-1] + "ieth"
    return f"{EN_TENS[tens]}-{EN_ORDINAL_SMALL[units]}"


def de_ordinal(n: int, dative: bool = False) -> str:
    """German ordinal for 1..99 after a definite article.

    The ending carries the case: "der dritte Mai" (nominative), "am dritten Mai" (dative).
    Below 20 the stem adds -t (with four irregular stems), from 20 on it adds -st.
    """
    _check_range(n, 1, 99)
    if n < 20:
        stem = DE_ORDINAL_IRREGULAR.get(n, DE_SMALL[n] + "t")
    else:
        stem = de_number(n) + "st"
    return stem + ("en" if dative else "e")


# ---------------------------------------------------------------------------------------
# Clock times (12-hour clock, hour 1..12)


def en_clock(hour: int, minute: int) -> str:
    """Spoken English time: "half past seven", "a quarter to nine", "ten past six"."""
    _check_time(hour, minute)
    coming = hour % 12 + 1
    if minute == 0:
        return f"{en_number(hour)} o'clock"
    if minute == 15:
        return f"a quarter past {en_number(hour)}"
    if minute == 30:
        return f"half past {en_number(hour)}"
    if minute == 45:
        return f"a quarter to {en_number(coming)}"
    if minute < 30:
        return f"{_en_minutes(minute)} past {en_number(hour)}"
    return f"{_en_minutes(60 - minute)} to {en_number(coming)}"


def de_clock(hour: int, minute: int) -> str:
    """Spoken German time, which counts half hours towards the coming hour:
    7:30 -> "halb acht", 6:25 -> "fünf vor halb sieben", 8:45 -> "Viertel vor neun"."""
    _check_time(hour, minute)
    coming = de_number(hour % 12 + 1)
    if minute == 0:
        return f"{_de_combining(hour)} Uhr"
    if minute == 15:
        return f"Viertel nach {de_number(hour)}"
    if minute == 30:
        return f"halb {coming}"
    if minute == 45:
        return f"Viertel vor {coming}"
    if minute == 25:
        return f"fünf vor halb {coming}"
    if minute == 35:
        return f"fünf nach halb {coming}"
    if minute < 30:
        return f"{_de_minutes(minute)} nach {de_number(hour)}"
    return f"{_de_minutes(60 - minute)} vor {coming}"


def en_digital(hour: int, minute: int) -> str:
    """Time read off a digital clock: 7:05 -> "seven oh five", 7:30 -> "seven thirty"."""
    _check_time(hour, minute)
    return f"{en_number(hour)} {'oh ' if minute < 10 else ''}{en_number(minute)}"


def de_digital(hour: int, minute: int) -> str:
    """Time read off a digital clock: 7:05 -> "sieben Uhr fünf", 1:30 -> "ein Uhr dreißig"."""
    _check_time(hour, minute)
    return f"{_de_combining(hour)} Uhr {de_number(minute)}"


def _en_minutes(minutes: int) -> str:
    """Multiples of five stand alone ("ten past"); other counts name the unit ("seven minutes past")."""
    if minutes % 5 == 0:
        return en_number(minutes)
    return "one minute" if minutes == 1 else f"{en_number(minutes)} minutes"


def _de_minutes(minutes: int) -> str:
    if minutes % 5 == 0:
        return de_number(minutes)
    return "eine Minute" if minutes == 1 else f"{de_number(minutes)} Minuten"


def _check_time(hour: int, minute: int) -> None:
    _check_range(hour, 1, 12)
    _check_range(minute, 0, 59)


# ---------------------------------------------------------------------------------------
# Dates

MONTHS = tuple(
    zip(
        "January February March April May June July August September October November December".split(),
        "Januar Februar März April Mai Juni Juli August September Oktober November Dezember".split(),
    )
)
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
"""February stops at 28 so that every date fits any year it is combined with."""
WEEKDAYS = tuple(
    zip(
        "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
        "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag".split(),
    )
)


def en_date(day: int, month: int) -> str:
    """English date with its article: (3, 5) -> "the third of May"."""
    _check_date(day, month)
    return f"the {en_ordinal(day)} of {MONTHS[month - 1][0]}"


def de_date(day: int, month: int, dative: bool = False) -> str:
    """German date without its article, whose case the caller supplies:
    "der " + (3, 5) -> "der dritte Mai", "am " + (3, 5, dative) -> "am dritten Mai"."""
    _check_date(day, month)
    return f"{de_ordinal(day, dative)} {MONTHS[month - 1][1]}"


def _check_date(day: int, month: int) -> None:
    _check_range(month, 1, 12)
    _check_range(day, 1, DAYS_IN_MONTH[month - 1])


# ---------------------------------------------------------------------------------------
# Sentence families. Each picks slot values for both languages and a frame that places
# them; word order differences live in the frames, number grammar in the functions above.

THINGS = (
    ("apples", "Äpfel"), ("books", "Bücher"), ("bottles", "Flaschen"), ("chairs", "Stühle"),
    ("tables", "Tische"), ("houses", "Häuser"), ("cars", "Autos"), ("letters", "Briefe"),
    ("flowers", "Blumen"), ("cups", "Tassen"), ("glasses", "Gläser"), ("pencils", "Bleistifte"),
    ("tickets", "Fahrkarten"), ("eggs", "Eier"), ("shoes", "Schuhe"), ("boxes", "Kisten"),
    ("lamps", "Lampen"), ("pictures", "Bilder"), ("keys", "Schlüssel"), ("stones", "Steine"),
)
ADJECTIVES = (
    ("small", "kleine"), ("big", "große"), ("old", "alte"), ("new", "neue"),
    ("red", "rote"), ("green", "grüne"), ("blue", "blaue"), ("cheap", "billige"),
)
COUNT_FRAMES: tuple[Frame, ...] = (
    ("I have {n} {things}", "ich habe {n} {things}"),
    ("we have {n} {things}", "wir haben {n} {things}"),
    ("she has {n} {things}", "sie hat {n} {things}"),
    ("he has {n} {things}", "er hat {n} {things}"),
    ("you have {n} {things}", "du hast {n} {things}"),
    ("I need {n} {things}", "ich brauche {n} {things}"),
    ("we need {n} {things}", "wir brauchen {n} {things}"),
    ("she wants {n} {things}", "sie will {n} {things}"),
    ("there are {n} {things}", "es gibt {n} {things}"),
    ("I bought {n} {things}", "ich habe {n} {things} gekauft"),
    ("she sold {n} {things}", "sie hat {n} {things} verkauft"),
    ("we found {n} {things}", "wir haben {n} {things} gefunden"),
    ("he ordered {n} {things}", "er hat {n} {things} bestellt"),
    ("they counted {n} {things}", "sie haben {n} {things} gezählt"),
    ("you saw {n} {things}", "du hast {n} {things} gesehen"),
    ("we carried {n} {things}", "wir haben {n} {things} getragen"),
)
AGE_FRAMES: tuple[Frame, ...] = (
    ("I am {n} years old", "ich bin {n} Jahre alt"),
    ("he is {n} years old", "er ist {n} Jahre alt"),
    ("she is {n} years old", "sie ist {n} Jahre alt"),
    ("my brother is {n} years old", "mein Bruder ist {n} Jahre alt"),
    ("my sister is {n} years old", "meine Schwester ist {n} Jahre alt"),
    ("the house is {n} years old", "das Haus ist {n} Jahre alt"),
    ("the tree is {n} years old", "der Baum ist {n} Jahre alt"),
)
PRICE_FRAMES: tuple[Frame, ...] = (
    ("it costs {price}", "es kostet {price}"),
    ("the book costs {price}", "das Buch kostet {price}"),
    ("the ticket costs {price}", "die Fahrkarte kostet {price}"),
    ("the coffee costs {price}", "der Kaffee kostet {price}"),
    ("the room costs {price}", "das Zimmer kostet {price}"),
    ("I paid {price}", "ich habe {price} bezahlt"),
)
UNITS = (
    # English, German accusative plural, German dative plural
    ("minutes", "Minuten", "Minuten"), ("hours", "Stunden", "Stunden"), ("days", "Tage", "Tagen"),
    ("weeks", "Wochen", "Wochen"), ("months", "Monate", "Monaten"), ("years", "Jahre", "Jahren"),
)
DURATION_FRAMES: tuple[Frame, ...] = (
    ("I waited for {span}", "ich habe {span} gewartet"),
    ("she slept for {span}", "sie hat {span} geschlafen"),
    ("we lived there for {span}", "wir haben {span} dort gewohnt"),
    ("he called {span} ago", "er hat vor {span_dat} angerufen"),
    ("they arrived {span} ago", "sie sind vor {span_dat} angekommen"),
    ("the train arrives in {span}", "der Zug kommt in {span_dat} an"),
    ("we will be back in {span}", "wir sind in {span_dat} zurück"),
)
LABEL_FRAMES: tuple[tuple[str, str, int], ...] = (
    # English, German, largest number
    ("number {n}", "Nummer {n}", 9999),
    ("read page {n}", "lies Seite {n}", 500),
    ("the meeting is in room {n}", "das Treffen ist in Raum {n}", 999),
    ("take line {n}", "nimm die Linie {n}", 99),
    ("my seat is number {n}", "mein Platz ist Nummer {n}", 300),
)
OPERATIONS = (("plus", "plus"), ("minus", "minus"), ("times", "mal"))
DAY_PARTS = (
    # English, German, hours that belong to it
    ("in the morning", "am Morgen", (5, 6, 7, 8, 9, 10, 11)),
    ("in the afternoon", "am Nachmittag", (12, 1, 2, 3, 4, 5)),
    ("in the evening", "am Abend", (6, 7, 8, 9, 10)),
    ("at night", "in der Nacht", (11, 12, 1, 2, 3)),
)
TIME_FRAMES: tuple[Frame, ...] = (
    ("{t}", "{t}"),
    ("it is {t}", "es ist {t}"),
    ("at {t}", "um {t}"),
)
EVENT_FRAMES: tuple[tuple[str, str, bool], ...] = (
    # English, German, past tense; {when} is "at <time>" / "um <time>" with an optional day
    ("the train leaves {when}", "der Zug fährt {when} ab", False),
    ("the bus arrives {when}", "der Bus kommt {when} an", False),
    ("I get up {when}", "ich stehe {when} auf", False),
    ("she gets up {when}", "sie steht {when} auf", False),
    ("the film starts {when}", "der Film fängt {when} an", False),
    ("the shop opens {when}", "der Laden öffnet {when}", False),
    ("the shop closes {when}", "der Laden schließt {when}", False),
    ("the meeting begins {when}", "das Treffen beginnt {when}", False),
    ("we meet {when}", "wir treffen uns {when}", False),
    ("he comes home {when}", "er kommt {when} nach Hause", False),
    ("we eat {when}", "wir essen {when}", False),
    ("the plane lands {when}", "das Flugzeug landet {when}", False),
    ("the train left {when}", "der Zug ist {when} abgefahren", True),
    ("I woke up {when}", "ich bin {when} aufgewacht", True),
    ("she called {when}", "sie hat {when} angerufen", True),
    ("the lesson ended {when}", "der Unterricht hat {when} geendet", True),
)
PLATFORM_FRAMES: tuple[Frame, ...] = (
    # German puts the time before the place
    ("the train leaves from platform {n}", "der Zug fährt von Gleis {n} ab"),
    ("the train leaves from platform {n} at {t}", "der Zug fährt um {t} von Gleis {n} ab"),
    ("the train arrives at platform {n} at {t}", "der Zug kommt um {t} auf Gleis {n} an"),
)
DATE_FRAMES: tuple[Frame, ...] = (
    # {the} is a nominative date, {on} the date after "on"/"am"
    ("{the}", "der {the}"),
    ("today is {the}", "heute ist der {the}"),
    ("tomorrow is {the}", "morgen ist der {the}"),
    ("{on}", "{on}"),
    ("my birthday is {on}", "mein Geburtstag ist {on}"),
    ("the concert is {on}", "das Konzert ist {on}"),
    ("we are leaving {on}", "wir fahren {on} ab"),
    ("she was born {on}", "sie wurde {on} geboren"),
    ("the school opens again {on}", "die Schule öffnet {on} wieder"),
    ("the shop is closed until {the}", "der Laden ist bis zum {until} geschlossen"),
)
RANGE_FRAMES: tuple[Frame, ...] = (
    ("{range}", "{range}"),
    ("the exhibition runs {range}", "die Ausstellung läuft {range}"),
    ("we are on holiday {range}", "wir sind {range} im Urlaub"),
)
YEAR_FRAMES: tuple[Frame, ...] = (
    ("in {year}", "im Jahr {year}"),
    ("in {month} {year}", "im {month} {year}"),
    ("she was born in {year}", "sie wurde im Jahr {year} geboren"),
    ("he was born in {month} {year}", "er wurde im {month} {year} geboren"),
    ("the house was built in {year}", "das Haus wurde im Jahr {year} gebaut"),
    ("the bridge was finished in {year}", "die Brücke wurde im Jahr {year} fertig"),
    ("we moved to Berlin in {year}", "wir sind im Jahr {year} nach Berlin gezogen"),
)
WEEKDAY_PARTS = (("morning", "morgen"), ("afternoon", "nachmittag"), ("evening", "abend"))
"""Parts of the day that German joins to a weekday: "on Monday evening" -> "am Montagabend"."""
ROUTINE_FRAMES: tuple[tuple[str, str, bool], ...] = (
    # English, German, past tense; {when} is a day such as "next Monday" / "nächsten Montag"
    ("{when}", "{when}", False),
    ("I work {when}", "ich arbeite {when}", False),
    ("we play football {when}", "wir spielen {when} Fußball", False),
    ("she visits us {when}", "sie besucht uns {when}", False),
    ("the shop is closed {when}", "der Laden ist {when} geschlossen", False),
    ("we are flying to Rome {when}", "wir fliegen {when} nach Rom", False),
    ("I worked {when}", "ich habe {when} gearbeitet", True),
    ("we played football {when}", "wir haben {when} Fußball gespielt", True),
    ("she visited us {when}", "sie hat uns {when} besucht", True),
    ("they flew to Rome {when}", "sie sind {when} nach Rom geflogen", True),
)
ORDINAL_FRAMES: tuple[tuple[str, str, int], ...] = (
    # English, German, largest ordinal; {nth} is nominative/accusative, {nth_dat} dative
    ("for the {nth} time", "zum {nth_dat} Mal", 30),
    ("she lives on the {nth} floor", "sie wohnt im {nth_dat} Stock", 40),
    ("on the {nth} day", "am {nth_dat} Tag", 99),
    ("read the {nth} chapter", "lies das {nth} Kapitel", 40),
    ("the {nth} chapter is long", "das {nth} Kapitel ist lang", 40),
)


def _fill(frame: Frame, en_slots: dict[str, str], de_slots: dict[str, str]) -> Pair:
    return frame[0].format(**en_slots), frame[1].format(**de_slots)


def _some_number(rng: random.Random) -> int:
    """Mostly below 100, where the two languages order digits differently; some to 9999."""
    upper = rng.choices((100, 1000, 10000), weights=(5, 3, 2))[0]
    return rng.randrange(upper)


def _plural_count(rng: random.Random, upper: int) -> int:
    """A count from 2 to upper-1 for a plural noun, skipping x01 numbers (101 etc.):
    before a noun their German form is unsettled ("hundertein" or "hundertundein")."""
    while True:
        n = rng.randrange(2, upper)
        if n % 100 != 1:
            return n


def _number_pair(rng: random.Random) -> Pair:
    n = _some_number(rng)
    return en_number(n), de_number(n)


def _label_pair(rng: random.Random) -> Pair:
    en, de, largest = rng.choice(LABEL_FRAMES)
    n = rng.randint(1, largest)
    return _fill((en, de), {"n": en_number(n)}, {"n": de_number(n)})


def _count_pair(rng: random.Random) -> Pair:
    n = _plural_count(rng, rng.choice((100, 1000)))
    en_things, de_things = rng.choice(THINGS)
    if rng.random() < 0.3:
        en_adjective, de_adjective = rng.choice(ADJECTIVES)
        en_things, de_things = f"{en_adjective} {en_things}", f"{de_adjective} {de_things}"
    return _fill(
        rng.choice(COUNT_FRAMES),
        {"n": en_number(n), "things": en_things},
        {"n": de_number(n), "things": de_things},
    )


def _age_pair(rng: random.Random) -> Pair:
    n = _plural_count(rng, 100)
    return _fill(rng.choice(AGE_FRAMES), {"n": en_number(n)}, {"n": de_number(n)})


def _price_pair(rng: random.Random) -> Pair:
    euros = _plural_count(rng, 1000)
    en_price, de_price = f"{en_number(euros)} euros", f"{de_number(euros)} Euro"
    if rng.random() < 0.4:
        cents = _plural_count(rng, 100)
        en_price += f" and {en_number(cents)} cents"
        de_price += f" und {de_number(cents)} Cent"
    return _fill(rng.choice(PRICE_FRAMES), {"price": en_price}, {"price": de_price})


def _duration_pair(rng: random.Random) -> Pair:
    n = _plural_count(rng, 61)
    en_unit, de_unit, de_unit_dative = rng.choice(UNITS)
    return _fill(
        rng.choice(DURATION_FRAMES),
        {"span": f"{en_number(n)} {en_unit}"},
        {"span": f"{de_number(n)} {de_unit}", "span_dat": f"{de_number(n)} {de_unit_dative}"},
    )


def _sum_pair(rng: random.Random) -> Pair:
    en_op, de_op = rng.choice(OPERATIONS)
    if en_op == "times":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        result = a * b
    else:
        a, b = rng.randrange(100), rng.randrange(100)
        if en_op == "minus":
            a, b = max(a, b), min(a, b)
        result = a + b if en_op == "plus" else a - b
    return (
        f"{en_number(a)} {en_op} {en_number(b)} is {en_number(result)}",
        f"{de_number(a)} {de_op} {de_number(b)} ist {de_number(result)}",
    )


def _time_phrase(rng: random.Random) -> tuple[Pair, bool]:
    """A random clock time, mostly in five-minute steps, sometimes with a part of the day.

    Returns the pair and whether it names a part of the day (then no other day word fits).
    """
    hour = rng.randint(1, 12)
    minute = rng.randrange(0, 60, 5) if rng.random() < 0.8 else rng.randrange(60)
    if minute and rng.random() < 0.2:
        return (en_digital(hour, minute), de_digital(hour, minute)), False
    en, de = en_clock(hour, minute), de_clock(hour, minute)
    parts = [part for part in DAY_PARTS if hour in part[2]]
    if rng.random() < 0.3:
        en_part, de_part, _ = rng.choice(parts)
        return (f"{en} {en_part}", f"{de} {de_part}"), True
    return (en, de), False


def _time_pair(rng: random.Random) -> Pair:
    (en, de), _ = _time_phrase(rng)
    return _fill(rng.choice(TIME_FRAMES), {"t": en}, {"t": de})


def _event_pair(rng: random.Random) -> Pair:
    """'the train leaves at seven o'clock on Monday' -> 'der Zug fährt am Montag um sieben Uhr ab':
    German puts the day before the time and the verb particle last."""
    en_frame, de_frame, past = rng.choice(EVENT_FRAMES)
    (en_time, de_time), has_day_part = _time_phrase(rng)
    en_when, de_when = f"at {en_time}", f"um {de_time}"
    if not has_day_part and rng.random() < 0.4:
        en_day, de_day = _day_phrase(rng, past)
        en_when, de_when = f"{en_when} {en_day}", f"{de_day} {de_when}"
    return _fill((en_frame, de_frame), {"when": en_when}, {"when": de_when})


def _platform_pair(rng: random.Random) -> Pair:
    n = rng.randint(1, 20)
    (en_time, de_time), _ = _time_phrase(rng)
    return _fill(rng.choice(PLATFORM_FRAMES), {"n": en_number(n), "t": en_time}, {"n": de_number(n), "t": de_time})


def _day_phrase(rng: random.Random, past: bool) -> Pair:
    """A day that fits the tense: "next Monday" -> "nächsten Montag", "on Mondays" -> "montags",
    "on Monday evening" -> "am Montagabend", "last Friday" -> "letzten Freitag"."""
    en_day, de_day = rng.choice(WEEKDAYS)
    en_part, de_part = rng.choice(WEEKDAY_PARTS)
    forms = [
        (f"on {en_day}", f"am {de_day}"),
        (f"on {en_day} {en_part}", f"am {de_day}{de_part}"),
        (f"every {en_day}", f"jeden {de_day}"),
        ("today", "heute"),
    ]
    if past:
        forms += [(f"last {en_day}", f"letzten {de_day}"), ("yesterday", "gestern")]
    else:
        forms += [(f"next {en_day}", f"nächsten {de_day}"), (f"on {en_day}s", f"{de_day.lower()}s"),
                  ("tomorrow", "morgen")]
    return rng.choice(forms)


def _some_date(rng: random.Random) -> tuple[int, int]:
    month = rng.randint(1, 12)
    return rng.randint(1, DAYS_IN_MONTH[month - 1]), month


def _date_pair(rng: random.Random) -> Pair:
    """'on Monday the third of May' -> 'am Montag, dem dritten Mai': the article and the
    ordinal ending follow the case the frame needs."""
    day, month = _some_date(rng)
    en_the, de_the, de_dative = en_date(day, month), de_date(day, month), de_date(day, month, dative=True)
    choice = rng.random()
    if choice < 0.2:
        year = _some_year(rng)
        en_the += f" {en_year(year)}"
        de_the += f" {de_year(year)}"
        de_dative += f" {de_year(year)}"
    en_on, de_on = f"on {en_the}", f"am {de_dative}"
    if 0.2 <= choice < 0.35:
        en_day, de_day = rng.choice(WEEKDAYS)
        en_on, de_on = f"on {en_day} {en_the}", f"am {de_day}, dem {de_dative}"
    return _fill(
        rng.choice(DATE_FRAMES),
        {"the": en_the, "on": en_on},
        {"the": de_the, "on": de_on, "until": de_dative},
    )


def _range_pair(rng: random.Random) -> Pair:
    """'from the first to the third of May' -> 'vom ersten bis zum dritten Mai'."""
    first, last = _some_date(rng), _some_date(rng)
    while first == last:
        last = _some_date(rng)
    (day1, month1), (day2, month2) = sorted((first, last), key=lambda date: (date[1], date[0]))
    if month1 == month2:
        en = f"from the {en_ordinal(day1)} to {en_date(day2, month2)}"
        de = f"vom {de_ordinal(day1, dative=True)} bis zum {de_date(day2, month2, dative=True)}"
    else:
        en = f"from {en_date(day1, month1)} to {en_date(day2, month2)}"
        de = f"vom {de_date(day1, month1, dative=True)} bis zum {de_date(day2, month2, dative=True)}"
    return _fill(rng.choice(RANGE_FRAMES), {"range": en}, {"range": de})


def _some_year(rng: random.Random) -> int:
    """Mostly recent years; sometimes any year from 1100 to 2099."""
    return rng.randint(1900, 2030) if rng.random() < 0.7 else rng.randint(1100, 2099)


def _year_pair(rng: random.Random) -> Pair:
    year = _some_year(rng)
    en_month, de_month = rng.choice(MONTHS)
    return _fill(
        rng.choice(YEAR_FRAMES),
        {"year": en_year(year), "month": en_month},
        {"year": de_year(year), "month": de_month},
    )


def _routine_pair(rng: random.Random) -> Pair:
    en_frame, de_frame, past = rng.choice(ROUTINE_FRAMES)
    en_day, de_day = _day_phrase(rng, past)
    return _fill((en_frame, de_frame), {"when": en_day}, {"when": de_day})


def _ordinal_pair(rng: random.Random) -> Pair:
    en, de, largest = rng.choice(ORDINAL_FRAMES)
    n = rng.randint(1, largest)
    return _fill((en, de), {"nth": en_ordinal(n)}, {"nth": de_ordinal(n), "nth_dat": de_ordinal(n, dative=True)})


FAMILIES: tuple[tuple[Callable[[random.Random], Pair], float], ...] = (
    (_number_pair, 12),
    (_label_pair, 4),
    (_platform_pair, 3),
    (_count_pair, 12),
    (_age_pair, 4),
    (_price_pair, 5),
    (_duration_pair, 5),
    (_sum_pair, 4),
    (_time_pair, 10),
    (_event_pair, 14),
    (_date_pair, 13),
    (_range_pair, 4),
    (_year_pair, 7),
    (_routine_pair, 4),
    (_ordinal_pair, 3),
)
"""Sentence families and their relative frequency before de-duplication."""


def sample_pair(rng: random.Random) -> Pair:
    """One random sentence pair; the same English sentence always gets the same German one."""
    family = rng.choices([f for f, _ in FAMILIES], weights=[w for _, w in FAMILIES])[0]
    return family(rng)


# ---------------------------------------------------------------------------------------
# Corpus


def generate(n_train: int = 20_000, n_valid: int = 500, n_test: int = 500, seed: int = 1) -> dict[str, list[Pair]]:
    """Splits of distinct sentence pairs: {"train": [...], "valid": [...], "test": [...]}.

    No English sentence occurs in two splits. Test and valid are drawn first, so for a
    given seed they stay the same when more or less training data is asked for.
    """
    pairs = _distinct_pairs(random.Random(seed), n_test + n_valid + n_train)
    return {
        "train": pairs[n_test + n_valid :],
        "valid": pairs[n_test : n_test + n_valid],
        "test": pairs[:n_test],
    }


def _distinct_pairs(rng: random.Random, count: int) -> list[Pair]:
    """`count` pairs with distinct English sides, in the order they were first drawn."""
    seen: dict[str, str] = {}
    budget = 50 * count + 1000
    while len(seen) < count:
        if budget == 0:
            raise ValueError(f"cannot draw {count} distinct sentences; only {len(seen)} found")
        budget -= 1
        en, de = sample_pair(rng)
        seen.setdefault(en, de)
    return list(seen.items())


def write(splits: dict[str, list[Pair]], outdir: Path) -> None:
    """Write OUTDIR/SPLIT.en and OUTDIR/SPLIT.de, UTF-8, one sentence a line."""
    outdir.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        for side, lang in enumerate(("en", "de")):
            text = "".join(pair[side] + "\n" for pair in pairs)
            (outdir / f"{split}.{lang}").write_text(text, encoding="utf-8", newline="\n")


def describe(splits: dict[str, list[Pair]]) -> str:
    """One line: sizes, distinct words and mean sentence length per language."""
    pairs = [pair for split in splits.values() for pair in split]
    sides = []
    for side, lang in enumerate(("en", "de")):
        lengths = [len(pair[side].split()) for pair in pairs]
        words = {word for pair in pairs for word in pair[side].split()}
        mean = statistics.fmean(lengths) if lengths else 0.0
        sides.append(f"{lang} {len(words)} distinct words, {mean:.1f} words a line")
    sizes = " / ".join(f"{split} {len(split_pairs)}" for split, split_pairs in splits.items())
    return f"{sizes} pairs; {'; '.join(sides)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic English->German toy corpus.")
    parser.add_argument("outdir", type=Path, help="folder for {train,valid,test}.{en,de}")
    parser.add_argument("--train", type=_count, default=20_000, help="training pairs (default 20000)")
    parser.add_argument("--valid", type=_count, default=500, help="validation pairs (default 500)")
    parser.add_argument("--test", type=_count, default=500, help="test pairs (default 500)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    try:
        splits = generate(args.train, args.valid, args.test, args.seed)
    except ValueError as error:
        parser.error(str(error))
    write(splits, args.outdir)
    print(f"{args.outdir}: {describe(splits)}")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


if __name__ == "__main__":
    main()
