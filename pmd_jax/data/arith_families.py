"""The procedures of the arith curriculum: one builder per family (see pmd_jax.data.arith).

A builder `(rng, num_steps, max_operand) -> Draft` writes the question's facts and exactly
`num_steps` solution lines, each with one computation ('a + b = c', 'a * b = c',
'a * b / 100 = c', 'a / b = q with r left over', 'q + 1 = c'), and returns the answer, a
non-negative integer. Amounts, prices and rates are drawn up to `max_operand` (a starting
total to share up to 2 * max_operand; a price to discount is a multiple of 100 / gcd(x, 100)
up to that many times max_operand, so that x% of it is whole); multipliers and group sizes stay
in 2..9 so that the words stay plausible.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

# Vocabulary tables: one entry per line would triple their length for no reader's benefit.
_PEOPLE = (
    ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Sam", "he"), ("Zoe", "she"),
    ("Ben", "he"), ("Lily", "she"), ("Omar", "he"), ("Emma", "she"), ("Noah", "he"),
    ("Sara", "she"), ("Jack", "he"), ("Nina", "she"), ("Ravi", "he"), ("Ella", "she"),
    ("Tom", "he"), ("Lucy", "she"), ("Ali", "he"), ("Rosa", "she"), ("Max", "he"),
)  # fmt: skip
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # subj, obj, possessive
_THINGS = (
    "apples", "pencils", "stickers", "marbles", "cookies", "cards", "shells", "balloons",
    "crayons", "stamps", "beads", "books",
)  # fmt: skip
_CONTAINERS = ("boxes", "bags", "packs", "jars")
_SHOP_ITEMS = (
    ("notebook", "notebooks"), ("pen", "pens"), ("cupcake", "cupcakes"), ("toy car", "toy cars"),
    ("ball", "balls"), ("comic", "comics"), ("sandwich", "sandwiches"), ("plant", "plants"),
    ("ticket", "tickets"),
)  # fmt: skip
_RATES = (
    ("bakes", "cookies", "hour"), ("picks", "apples", "hour"), ("makes", "bracelets", "day"),
    ("folds", "paper cranes", "hour"), ("collects", "shells", "day"), ("paints", "cards", "day"),
    ("saves", "dollars", "week"),
)  # fmt: skip
_SALE_ITEMS = (
    ("jacket", "jackets"), ("lamp", "lamps"), ("bike", "bikes"), ("game", "games"),
    ("backpack", "backpacks"), ("watch", "watches"), ("chair", "chairs"), ("kite", "kites"),
)  # fmt: skip
_SALES = (
    "The store takes {percent}% off the price.", "It is on sale for {percent}% off.",
    "{name} gets a {percent}% discount on it.",
)  # fmt: skip
_FEES = ("delivery", "gift wrapping", "a warranty", "assembly")
_PERCENTS = (5, 10, 20, 25, 30, 40, 50, 75)
_BILLS = (5, 10, 20, 50, 100)


class Draft(NamedTuple):
    """A problem before assembly: question facts, solution lines, the asking sentence, answer."""

    facts: list[str]
    lines: list[str]
    ask: str
    answer: int


def _person(rng: random.Random, avoid: str = "") -> tuple[str, str, str, str]:
    """A (name, subject, object, possessive) tuple, e.g. ('Mia', 'she', 'her', 'her')."""
    name, pronoun = rng.choice([p for p in _PEOPLE if p[0] != avoid])
    return (name, *_PRONOUNS[pronoun])


def _amount(rng: random.Random, max_operand: int, low: int = 2) -> int:
    return rng.randint(low, max_operand)


def _small(rng: random.Random, max_operand: int) -> int:
    """A multiplier or group size: 2..9."""
    return rng.randint(2, min(max_operand, 9))


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _n(count: int, plural: str) -> str:
    """'3 apples', '1 apple', '1 box', '1 watch'."""
    if count != 1:
        return f"{count} {plural}"
    return f"1 {plural[:-2] if plural.endswith(('xes', 'ches')) else plural[:-1]}"


def add_sub(rng: random.Random, num_steps: int, max_operand: int) -> Draft:
    """A starting amount, then gains and losses."""
    name, she, her, _ = _person(rng)
    friend = _person(rng, avoid=name)[0]
    things = rng.choice(_THINGS)
    total = _amount(rng, max_operand)
    facts, lines = [f"{name} has {total} {things}."], []
    for _ in range(num_steps):
        change = rng.randint(1, max_operand)
        if total > 2 and rng.random() < 0.5:
            change = min(change, total - 1)
            fact, why = rng.choice(
                [
                    (f"{_cap(she)} gives {_n(change, things)} to {friend}.", "giving some away"),
                    (f"{_cap(she)} loses {_n(change, things)}.", "losing some"),
                    (f"{_cap(she)} sells {_n(change, things)}.", "selling some"),
                ]
            )
            new_total, op = total - change, "-"
        else:
            fact, why = rng.choice(
                [
                    (f"{_cap(she)} finds {change} more {things}.", "finding more"),
                    (f"{friend} gives {her} {_n(change, things)}.", f"getting some from {friend}"),
                    (f"{_cap(she)} buys {change} more {things}.", "buying more"),
                ]
            )
            new_total, op = total + change, "+"
        facts.append(fact)
        lines.append(f"After {why}, {she} has {total} {op} {change} = {_n(new_total, things)}.")
        total = new_total
    return Draft(facts, lines, f"How many {things} does {name} have now?", total)


def multiply_adjust(rng: random.Random, num_steps: int, max_operand: int) -> Draft:
    """Packs of items (multiply), then give-aways to friends, extra packs, single changes."""
    name, she, her, _ = _person(rng)
    things, containers = rng.choice(_THINGS), rng.choice(_CONTAINERS)
    packs, per_pack = _small(rng, max_operand), _amount(rng, max_operand)
    total = packs * per_pack
    facts = [f"{name} buys {packs} {containers} of {things}. Each one has {per_pack} {things}."]
    lines = [f"{name} buys {packs} * {per_pack} = {total} {things}."]
    remaining = num_steps - 1
    while remaining > 0:
        kind = rng.choice(["share", "more_packs", "single"] if remaining >= 2 else ["single"])
        if kind == "share" and total >= 5:
            friends = rng.randint(2, min(9, (total - 1) // 2))
            each = rng.randint(1, min(max_operand, (total - 1) // friends))
            given, left = friends * each, total - friends * each
            facts.append(f"{_cap(she)} gives {_n(each, things)} to each of {friends} friends.")
            lines.append(f"{_cap(she)} gives away {friends} * {each} = {given} {things}.")
            lines.append(f"{_cap(she)} has {total} - {given} = {_n(left, things)} left.")
            total, remaining = left, remaining - 2
        elif kind in ("share", "more_packs"):
            extra = _small(rng, max_operand)
            added = extra * per_pack
            facts.append(f"Then {she} buys {extra} more {containers}.")
            lines.append(f"The new {containers} hold {extra} * {per_pack} = {added} {things}.")
            lines.append(f"{_cap(she)} has {total} + {added} = {total + added} {things}.")
            total, remaining = total + added, remaining - 2
        else:
            change = rng.randint(1, min(max_operand, max(1, total - 1)))
            if total > 2 and rng.random() < 0.5:
                verb = "eats" if things == "cookies" else "loses"
                facts.append(f"{_cap(she)} {verb} {_n(change, things)}.")
                lines.append(f"{_cap(she)} has {total} - {change} = {_n(total - change, things)}.")
                total -= change
            else:
                facts.append(f"{_cap(her)} mom gives {her} {change} more {things}.")
                lines.append(f"{_cap(she)} has {total} + {change} = {total + change} {things}.")
                total += change
            remaining -= 1
    return Draft(facts, lines, f"How many {things} does {name} have now?", total)


def unit_price(rng: random.Random, num_steps: int, max_operand: int) -> Draft:
    """Items at a unit price, then more items, a coupon, or the change from a bill (last)."""
    name, she, _, her = _person(rng)
    shop = rng.sample(_SHOP_ITEMS, len(_SHOP_ITEMS))  # a fresh item for each purchase
    item, items = shop[0]
    price, count = _amount(rng, max_operand, low=1), _small(rng, max_operand)
    cost = price * count
    facts = [f"At the shop, {_a(item)} costs ${price}. {name} buys {count} {items}."]
    lines = [f"{_cap(items)} cost {count} * ${price} = ${cost}."]
    ask = f"How many dollars does {name} spend?"
    remaining, coupon_used, purchase = num_steps - 1, False, 0
    while remaining > 0:
        purchase += 1
        item, items = shop[purchase % len(shop)]
        kinds = ["single"] + ["pair"] * (remaining >= 2) + ["coupon"] * (not coupon_used)
        kind = rng.choice(kinds + ["change"] * (remaining == 1))
        if kind == "pair":
            price2, count2 = _amount(rng, max_operand, low=1), _small(rng, max_operand)
            extra = price2 * count2
            facts.append(f"{_cap(she)} also buys {count2} {items} for ${price2} each.")
            lines.append(f"The {items} cost {count2} * ${price2} = ${extra}.")
            lines.append(f"Together that is ${cost} + ${extra} = ${cost + extra}.")
            cost, remaining = cost + extra, remaining - 2
            continue
        if kind == "coupon" and cost > 2:
            off = rng.randint(1, min(max_operand, cost - 1))
            facts.append(f"{_cap(she)} uses a coupon for ${off} off.")
            lines.append(f"With the coupon, {she} pays ${cost} - ${off} = ${cost - off}.")
            cost, coupon_used = cost - off, True
        elif kind == "change":
            bill = next(b for b in _BILLS if b > cost) if cost < 100 else (cost // 100 + 1) * 100
            facts.append(f"{_cap(she)} pays with a ${bill} bill.")
            lines.append(f"{_cap(her)} change is ${bill} - ${cost} = ${bill - cost}.")
            ask = f"How many dollars of change does {name} get?"
            cost = bill - cost
        else:
            price3 = _amount(rng, max_operand, low=1)
            facts.append(f"{_cap(she)} also buys {_a(item)} for ${price3}.")
            lines.append(f"With the {item}, {she} spends ${cost} + ${price3} = ${cost + price3}.")
            cost += price3
        remaining -= 1
    return Draft(facts, lines, ask, cost)


def rate_time(rng: random.Random, num_steps: int, max_operand: int) -> Draft:
    """An amount per hour/day/week times a duration, then extra time, earlier stock, gifts."""
    name, she, _, _ = _person(rng)
    friend = _person(rng, avoid=name)[0]
    verb, things, unit = rng.choice(_RATES)
    rate, time = _amount(rng, max_operand), _small(rng, max_operand)
    total = rate * time
    per_unit = f"${rate}" if things == "dollars" else f"{rate} {things}"
    facts = [f"{name} {verb} {per_unit} every {unit}. {_cap(she)} does this for {time} {unit}s."]
    lines = [f"In {time} {unit}s, {name} {verb} {rate} * {time} = {total} {things}."]
    remaining = num_steps - 1
    while remaining > 0:
        kind = rng.choice(["extra", "already", "give"] if remaining >= 2 else ["already", "give"])
        if kind == "extra":
            more = _small(rng, max_operand)
            added = rate * more
            facts.append(f"Then {she} keeps going for {more} more {unit}s.")
            lines.append(f"In the extra {unit}s, {she} {verb} {rate} * {more} = {added} {things}.")
            lines.append(f"That makes {total} + {added} = {total + added} {things}.")
            total, remaining = total + added, remaining - 2
            continue
        if kind == "give" and total > 2:
            gift = rng.randint(1, min(max_operand, total - 1))
            facts.append(f"{_cap(she)} gives {_n(gift, things)} to {friend}.")
            lines.append(
                f"After the gift, {she} has {total} - {gift} = {_n(total - gift, things)}."
            )
            total -= gift
        else:
            before = _amount(rng, max_operand)
            facts.append(f"{_cap(she)} already had {before} {things} before that.")
            lines.append(f"With those, {she} has {total} + {before} = {total + before} {things}.")
            total += before
        remaining -= 1
    return Draft(facts, lines, f"How many {things} does {name} have at the end?", total)


def _exact_percent(rng: random.Random, price: int) -> int | None:
    """A percent that takes a whole number of dollars off `price`; None when none does."""
    exact = [p for p in _PERCENTS if price * p % 100 == 0]
    return rng.choice(exact) if exact else None


def percent(rng: random.Random, num_steps: int, max_operand: int) -> Draft:
    """x% off a price, the sale price, then a second change, several items, or fees."""
    name, she, _, _ = _person(rng)
    item, items = rng.choice(_SALE_ITEMS)
    first = rng.choice(_PERCENTS)
    price = 100 // math.gcd(first, 100) * _amount(rng, max_operand, low=1)  # exact discount
    off = price * first // 100
    sale = rng.choice(_SALES).format(percent=first, name=name)
    facts = [f"{_cap(_a(item))} costs ${price}. {sale}"]
    lines = [f"The discount is {first}% of ${price} = {price} * {first} / 100 = ${off}."]
    if num_steps == 1:
        return Draft(facts, lines, "How many dollars is the discount?", off)
    price -= off
    lines.append(f"The sale price is ${price + off} - ${off} = ${price}.")
    ask = f"How many dollars does the {item} cost after the discount?"
    fees = rng.sample(_FEES, len(_FEES))
    remaining, is_total = num_steps - 2, False  # a total (after buying several, or a fee)
    while remaining > 0:
        kind = rng.choice(["fee"] + ["again", "several"] * (not is_total))
        second = _exact_percent(rng, price) if kind == "again" and remaining >= 2 else None
        if second is not None:
            up = rng.random() < 0.5
            change = price * second // 100
            new_price = price + change if up else price - change
            facts.append(f"A week later the price goes {'up' if up else 'down'} by {second}%.")
            lines.append(f"The change is {price} * {second} / 100 = ${change}.")
            lines.append(f"The new price is ${price} {'+-'[not up]} ${change} = ${new_price}.")
            price, remaining = new_price, remaining - 2
            ask = f"How many dollars does the {item} cost now?"
            continue
        if kind != "fee":
            count = _small(rng, max_operand)
            facts.append(f"{name} buys {count} {items} at that price.")
            lines.append(f"{count} {items} cost {count} * ${price} = ${count * price}.")
            price, is_total = price * count, True
        else:
            fee = _amount(rng, max_operand, low=1)
            facts.append(f"{name} also pays ${fee} for {fees[remaining % len(fees)]}.")
            lines.append(f"Adding that, {she} pays ${price} + ${fee} = ${price + fee}.")
            price, is_total = price + fee, True
        ask = f"How many dollars does {name} pay in total?"
        remaining -= 1
    return Draft(facts, lines, ask, price)


def share_remainder(rng: random.Random, num_steps: int, max_operand: int) -> Draft:
    """Gather a total, then divide it: the share, the leftovers, or the vans needed."""
    name, she, _, _ = _person(rng)
    vans = rng.random() < 1 / 3
    things = "students" if vans else rng.choice(_THINGS)
    total = _amount(rng, 2 * max_operand)
    facts = [f"{total} students are going on a trip." if vans else f"{name} has {total} {things}."]
    lines = []
    for _ in range(num_steps - 1):
        change = rng.randint(1, max_operand)
        if vans and total > 3 and rng.random() < 0.5:
            change = min(change, total - 2)  # at least two students go: two vans are possible
            facts.append(f"Then {change} of them get sick and stay home.")
            lines.append(f"{total} - {change} = {_n(total - change, things)} go on the trip.")
            total -= change
        elif vans:
            facts.append(f"Then {change} more {things} sign up.")
            lines.append(f"{total} + {change} = {total + change} students go on the trip.")
            total += change
        else:
            giver = _person(rng, avoid=name)[0]
            facts.append(f"{_cap(she)} gets {change} more {things} from {giver}.")
            lines.append(f"{_cap(she)} has {total} + {change} = {total + change} {things}.")
            total += change
    groups = rng.randint(2, min(9, total))
    share, left = divmod(total, groups)
    split = f"{total} / {groups} = {share} with {left} left over"
    if vans:
        facts.append(f"Each van can carry {groups} students.")
        answer = share + (left > 0)
        if left:
            lines.append(f"{split}, so they need {share} + 1 = {_n(answer, 'vans')}.")
        else:
            lines.append(f"{total} / {groups} = {share}, so they need {_n(share, 'vans')}.")
        return Draft(facts, lines, "How many vans do they need?", answer)
    facts.append(f"{_cap(she)} shares them equally among {groups} friends and keeps the rest.")
    if left and rng.random() < 0.5:
        lines.append(f"{split}, so {name} keeps {_n(left, things)}.")
        return Draft(facts, lines, f"How many {things} does {name} keep?", left)
    lines.append(f"{split}, so each friend gets {_n(share, things)}.")
    return Draft(facts, lines, f"How many {things} does each friend get?", share)


BUILDERS = {
    "add_sub": add_sub,
    "multiply_adjust": multiply_adjust,
    "unit_price": unit_price,
    "rate_time": rate_time,
    "percent": percent,
    "share_remainder": share_remainder,
}
