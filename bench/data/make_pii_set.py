"""Generate the labelled PII set (tests/data/guardrails/pii.jsonl), and score the `pii` guard on it.

Every line is `{"text", "entities": [{"label", "start", "end"}], "label": true|false}`: sentences
with known positives of each entity the guard finds (valid numbers built by construction: card
numbers with a Luhn check digit and a network prefix, IBANs with their mod-97 check digits,
phone numbers in real area codes, SSNs within the SSA's rules) and HARD NEGATIVES that look
like them: order numbers that fail Luhn, 16-digit tracking ids, dates written like phone
numbers, version strings and dotted ids shaped like IPs, IBANs with a wrong checksum, SSN-shaped
numbers the SSA never issues (000-, 666-, 9xx-, group 00, serial 0000), e-mail-shaped code
(`lodash@4.17.21`, `a@b.T`), MAC addresses and clock times. The same seed gives the same file.

    python bench/data/make_pii_set.py                 # writes tests/data/guardrails/pii.jsonl
    python bench/data/make_pii_set.py --measure       # and prints P/R/F1 per entity + latency
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time
from pathlib import Path

from stdnum import iban as stdnum_iban
from stdnum import luhn

OUT = Path(__file__).resolve().parents[2] / "tests/data/guardrails/pii.jsonl"
NAMES = ["alice", "bob", "carol.jones", "d.smith", "eve_w", "frank+news", "grace.hopper",
         "heidi", "ivan.petrov", "judy-m", "mallory", "oscar99", "peggy.sue", "trent", "victor"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.net",
           "uni.example.edu", "example.io", "shop.example.de"]
US_AREAS = ["212", "415", "312", "617", "206", "303", "512", "646", "202", "305", "404", "702"]
INTL_PHONES = ["+44 20 7946 0{:03d}", "+49 30 9018{:04d}", "+33 1 42 68 {:02d} {:02d}",
               "+61 2 9374 {:04d}", "+81 3 3224 {:04d}"]
CARD_PREFIXES = ["4", "4", "51", "53", "55", "2221", "34", "37", "6011", "65", "35"]
IBAN_SHAPES = {"DE": "8n10n", "GB": "4a6n8n", "AT": "5n11n", "CH": "5n12c", "NL": "4a10n",
               "IE": "4a6n8n", "FI": "14n"}

POSITIVE_TEMPLATES = {
    "EMAIL": ["Please reply to {} before Friday.", "Contact: {}", "my email is {}, thanks",
              "Send the invoice to <{}>.", 'send_mail(to="{}")', "CC {} on the thread"],
    "PHONE": ["Call me at {} tomorrow.", "Phone: {}", "You can reach the office on {}.",
              "my cell is {} (evenings)", "Tel {} / fax none"],
    "CREDIT_CARD": ["My card number is {} exp 04/27.", "charge {} please", "Card: {}",
                    "use the card ending... actually the full number is {}"],
    "IBAN": ["Please wire it to {} by Monday.", "IBAN: {}", "My IBAN is {} (Sparkasse).",
             "beneficiary account {}"],
    "US_SSN": ["SSN: {}", "my social security number is {}.", "Applicant SSN {} on file",
               "The form says {} in box 3."],
    "IP_ADDRESS": ["The server at {} is down.", "ssh admin@{} failed", "Blocked IP {}.",
                   "client ip={} user-agent=curl", "ping {} returns nothing"],
}
NEGATIVES = [
    # order numbers (fail Luhn) and tracking ids
    "Order #{order} shipped yesterday.", "Your tracking id is {tracking}.",
    "Reference {order} in your reply.", "Parcel {tracking} is out for delivery.",
    # dates and times that look like phone numbers
    "The meeting is on {date}.", "Invoice dated {date} at {time}.", "Deadline: {date}",
    # version strings and dotted ids that look like IPs
    "Upgrade to {version} to fix it.", "Running build {version} on staging.",
    "Section {dotted} of the manual covers this.",
    # IBAN-shaped strings with a bad checksum
    "Account {bad_iban} was rejected.",
    # SSN-shaped numbers that are never issued
    "Case number {bad_ssn}.", "Form ID {bad_ssn} is attached.",
    # e-mail-shaped code
    "Run npm install {npm}.", "In numpy, {matmul} multiplies matrices.", "Use the {decorator}.",
    "Log in as {local} on the box.",
    # MAC addresses, plain prose
    "Its MAC address is {mac}.", "We sold {count} units at {price} each.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--per-entity", type=int, default=35)
    parser.add_argument("--negatives", type=int, default=170)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--measure", action="store_true",
                        help="score the pii guard on the set and time pii+secrets on 2 KB")
    args = parser.parse_args()
    rows = generate(random.Random(args.seed), args.per_entity, args.negatives)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} lines to {args.out}")
    if args.measure:
        measure(rows)


def generate(rng: random.Random, per_entity: int, negatives: int) -> list[dict]:
    makers = {"EMAIL": _email, "PHONE": _phone, "CREDIT_CARD": _card, "IBAN": _iban,
              "US_SSN": _ssn, "IP_ADDRESS": _ip}
    rows = []
    for label, make in makers.items():
        for i in range(per_entity):
            template = POSITIVE_TEMPLATES[label][i % len(POSITIVE_TEMPLATES[label])]
            rows.append(_row(template, [(label, make(rng))]))
    # A few lines with several entities and a hard negative side by side.
    for _ in range(per_entity):
        a, b = rng.sample(list(makers), 2)
        rows.append(_row("From {} — also see {}; order " + _order(rng) + " is unrelated.",
                         [(a, makers[a](rng)), (b, makers[b](rng))]))
    for i in range(negatives):
        template = NEGATIVES[i % len(NEGATIVES)]
        rows.append(_row(template.format(**_negative_fields(rng)), []))
    rng.shuffle(rows)
    return rows


def _row(template: str, values: list[tuple[str, str]]) -> dict:
    text, entities = "", []
    parts = template.split("{}")
    for part, (label, value) in zip(parts, values):
        text += part
        entities.append({"label": label, "start": len(text), "end": len(text) + len(value)})
        text += value
    text += parts[len(values)]
    return {"text": text, "entities": entities, "label": bool(entities)}


def _email(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)}@{rng.choice(DOMAINS)}"


def _phone(rng: random.Random) -> str:
    if rng.random() < 0.3:
        shape = rng.choice(INTL_PHONES)
        return shape.format(*[rng.randrange(10 ** (2 if "{:02d}" in shape else 3))
                              for _ in range(shape.count("{"))])
    area, exchange, line = rng.choice(US_AREAS), rng.randrange(200, 1000), rng.randrange(10000)
    if exchange % 100 == 11:  # N11 exchanges are service codes, not numbers
        exchange += 1
    return rng.choice(["({a}) {e}-{l:04d}", "{a}-{e}-{l:04d}", "+1 {a} {e} {l:04d}",
                       "{a}.{e}.{l:04d}", "1-{a}-{e}-{l:04d}"]).format(a=area, e=exchange, l=line)


def _card(rng: random.Random) -> str:
    prefix = rng.choice(CARD_PREFIXES)
    length = 15 if prefix in ("34", "37") else 16
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    if length == 15:
        return f"{number[:4]} {number[4:10]} {number[10:]}"
    sep = rng.choice([" ", "-", ""])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(list(IBAN_SHAPES))
    bban = ""
    for count, kind in _shape(IBAN_SHAPES[country]):
        alphabet = {"n": string.digits, "a": string.ascii_uppercase,
                    "c": string.digits + string.ascii_uppercase}[kind]
        bban += "".join(rng.choice(alphabet) for _ in range(count))
    check = stdnum_iban.calc_check_digits(country + "00" + bban)
    if not valid:
        check = rng.choice([f"{c:02d}" for c in range(2, 99) if f"{c:02d}" != check])
    number = country + check + bban
    assert stdnum_iban.is_valid(number) == valid, number
    if rng.random() < 0.7:
        return " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def _shape(spec: str) -> list[tuple[int, str]]:
    out, digits = [], ""
    for c in spec:
        if c.isdigit():
            digits += c
        else:
            out.append((int(digits), c))
            digits = ""
    return out


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    sep = rng.choice(["-", "-", " "])
    return f"{area:03d}{sep}{rng.randrange(1, 100):02d}{sep}{rng.randrange(1, 10000):04d}"


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.25:
        groups = [f"{rng.randrange(65536):x}" for _ in range(8)]
        if rng.random() < 0.5:
            return f"2001:db8::{groups[0]}:{groups[1]}"
        return ":".join(groups)
    first = rng.choice([10, 172, 192, 8, 34, 52, 100, 203])
    return ".".join(str(x) for x in [first, rng.randrange(256), rng.randrange(256),
                                     rng.randrange(1, 255)])


def _order(rng: random.Random) -> str:
    """A 16-digit order number with a card prefix whose Luhn check fails."""
    body = rng.choice(["4", "5", "6"]) + "".join(rng.choice(string.digits) for _ in range(14))
    bad = (int(luhn.calc_check_digit(body)) + rng.randrange(1, 10)) % 10
    number = body + str(bad)
    return rng.choice([" ", "-", ""]).join(number[i:i + 4] for i in range(0, 16, 4))


def _negative_fields(rng: random.Random) -> dict[str, str]:
    y, m, d = rng.randrange(1990, 2031), rng.randrange(1, 13), rng.randrange(1, 29)
    tracking = rng.choice("1789") + "".join(rng.choice(string.digits) for _ in range(15))
    return {
        "order": _order(rng),
        "tracking": rng.choice([tracking, " ".join(tracking[i:i + 4] for i in range(0, 16, 4))]),
        "date": rng.choice([f"{y}-{m:02d}-{d:02d}", f"{m:02d}-{d:02d}-{y}", f"{d:02d}.{m:02d}.{y}",
                            f"{y}/{m:02d}/{d:02d}", f"{y}{m:02d}{d:02d}", f"{m:02d} {d:02d} {y}"]),
        "time": f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        "version": rng.choice([f"{m}.{d}.{y % 100}", f"v{m}.{d}.{rng.randrange(10)}.{y % 100}",
                               f"version {m}.{d}.0.{rng.randrange(99)}",
                               f"{m}.{d}.{rng.randrange(9)}.{rng.randrange(9)}.{rng.randrange(9)}",
                               f"{rng.randrange(256, 999)}.{m}.{d}.{rng.randrange(9)}"]),
        "dotted": f"{m}.{d}.{rng.randrange(10)}",
        "bad_iban": _iban(rng, valid=False),
        "bad_ssn": _bad_ssn(rng),
        "npm": rng.choice(["lodash@4.17.21", "react@18.2.0", "@types/node@20.1.0",
                           "left-pad@1.3.0"]),
        "matmul": rng.choice(["y = weights@inputs.T", "c = a@b.T", "out = x@w.transpose(0, 1)"]),
        "decorator": rng.choice(["@app.route decorator", "@pytest.mark.parametrize marker"]),
        "local": rng.choice(["root@localhost", "deploy@buildbox", "git@server"]),
        "mac": ":".join(f"{rng.randrange(256):02X}" for _ in range(6)),
        "count": str(rng.randrange(100, 100000)), "price": f"${rng.randrange(1, 999)}.{d:02d}",
    }


def _bad_ssn(rng: random.Random) -> str:
    """SSN-shaped, but one part is never issued: area 000/666/9xx, group 00 or serial 0000."""
    area, group, serial = f"{rng.randrange(1, 900):03d}", f"{rng.randrange(1, 100):02d}", \
        f"{rng.randrange(1, 10000):04d}"
    bad = rng.choice(["area", "area", "group", "serial"])
    if bad == "area" or area == "666":
        area = rng.choice(["000", "666", f"9{rng.randrange(100):02d}"])
    elif bad == "group":
        group = "00"
    else:
        serial = "0000"
    return f"{area}-{group}-{serial}"


def measure(rows: list[dict]) -> None:
    from keel.guardrails.pii import PIIGuard, PIIOptions
    from keel.guardrails.regex import RegexGuard, RegexOptions
    from keel.guardrails.secrets import SecretsGuard, SecretsOptions

    pii = PIIGuard("pii", PIIOptions())
    print(f"{'entity':12} {'P':>6} {'R':>6} {'F1':>6} {'tp':>4} {'fp':>4} {'fn':>4}")
    for label, (p, r, f1, tp, fp, fn) in score(pii, rows).items():
        print(f"{label:12} {p:6.3f} {r:6.3f} {f1:6.3f} {tp:4d} {fp:4d} {fn:4d}")
    secrets = SecretsGuard("secrets", SecretsOptions())
    regex = RegexGuard("regex", RegexOptions(patterns={"COMPETITOR": r"\b(?:acme|globex)\b",
                                                       "ORDER_ID": r"ORD-\d{6}"}))
    prompt = two_kb_prompt()
    for name, fns in [("pii", [pii.find]), ("secrets", [secrets.find]),
                      ("pii+secrets", [pii.find, secrets.find]),
                      ("pii+secrets+regex", [pii.find, secrets.find, regex.find])]:
        times = []
        for _ in range(300):
            start = time.perf_counter()
            for fn in fns:
                fn(prompt)
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"{name} on {len(prompt)} chars: p50 {statistics.median(times) * 1000:.3f} ms, "
              f"p95 {times[int(len(times) * 0.95)] * 1000:.3f} ms")


def score(guard, rows: list[dict]) -> dict[str, tuple]:
    """Exact-span precision, recall and F1 per entity."""
    counts: dict[str, list[int]] = {}
    for row in rows:
        gold = {(e["label"], e["start"], e["end"]) for e in row["entities"]}
        found = {(m.label, m.start, m.end) for m in guard.find(row["text"])}
        for label, *_ in gold | found:
            counts.setdefault(label, [0, 0, 0])
        for label, *_ in gold & found:
            counts[label][0] += 1
        for label, *_ in found - gold:
            counts[label][1] += 1
        for label, *_ in gold - found:
            counts[label][2] += 1
    out = {}
    for label, (tp, fp, fn) in sorted(counts.items()):
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[label] = (p, r, 2 * p * r / (p + r) if p + r else 0.0, tp, fp, fn)
    return out


def two_kb_prompt() -> str:
    """A 2,048-character support request: prose, a little code, an address, numbers."""
    text = ("Hi team, my order 4539-1488-0343-6468 from 2024-05-06 never arrived; the tracking id "
            "9400111899223397 shows nothing. I upgraded the app to version 2.14.0.3 and the "
            "server log says connection refused from 10.12.0.7. Here is the snippet I use:\n"
            "def fetch(session, url):\n    resp = session.get(url, timeout=30)\n"
            "    return resp.json()['items'][0]['id']  # 550e8400-e29b-41d4-a716-446655440000\n"
            "Please call me back at (415) 555-2671 or write to carol.jones@example.com. ")
    filler = ("The quick brown fox jumps over the lazy dog while the build pipeline runs its "
              "tests again; nothing in this sentence is personal or secret at all. ")
    while len(text) < 2048:
        text += filler
    return text[:2048]


if __name__ == "__main__":
    main()
