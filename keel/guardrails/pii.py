"""The `pii` guard: finds e-mail addresses, phone numbers, card numbers, IBANs, US SSNs and IP
addresses (plus the patterns a config adds) and lets the layer block, mask, pseudonymise or flag
them.

Each entity is a compiled regex that proposes candidates and a validator that keeps only real
ones: card numbers must pass Luhn and start like a card network's number, IBANs their mod-97
checksum and their country's length and format (`python-stdnum`), phone numbers Google's
numbering plan (`phonenumbers`, the library Android uses, installed as `phonenumberslite`), SSNs the SSA's area/group/serial
rules, IPs `ipaddress`. We use these libraries rather than presidio-analyzer: presidio's pattern
recognisers import spaCy (0.7 s at start) and its phone recogniser scans a 2 KB prompt in ~13 ms,
against our ~2 ms budget for every detector together (numbers and the decision in
docs/guards/pii.md). `find` is pure and local: no I/O, no model, safe to run on each stream chunk.

PERSON needs a named-entity model: it is found only when the config asks for it and a spaCy
pipeline (`ner_model`, e.g. en_core_web_sm) is installed locally; nothing is downloaded.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, field_validator
from stdnum import iban as stdnum_iban
from stdnum import luhn

from keel.errors import ConfigError
from keel.guardrails.base import GuardContext, GuardOptions, Match, Verdict, verdict_from_matches

BUILTIN = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS")
ENTITIES = (*BUILTIN, "PERSON")
# Which entity wins where two overlap (a 16-digit card number also contains phone-shaped runs).
PRIORITY = {label: i for i, label in enumerate(
    ("CREDIT_CARD", "IBAN", "US_SSN", "EMAIL", "IP_ADDRESS", "PHONE", "PERSON"))}
# A stream keeps back this many characters: an IBAN is at most 34 characters plus 8 spaces, a
# card 19 digits plus separators; e-mail addresses are bounded here, so a longer one split
# across chunks can pass (documented).
HOLDBACK = 128

EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
    # not `a@b.shape(`/`x@y.T` in code, nor a domain that goes on with more word characters
    r"(?![\w(@-]|\.[A-Za-z0-9])")
PHONE = re.compile(
    r"(?<![\w+/.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{1,5}){1,5}"
    r"(?![\w/-]|\.\d)")
DATE = re.compile(r"\d{4}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ]\d{2,4}|\d{8}")
CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?![\w-]|\.\d)")
# Prefixes the card networks issue (Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37,
# Discover/UnionPay 6, Diners 30/36/38, JCB 35): a Luhn-valid tracking id starting 1, 7, 8 or 9
# is not a card.
CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[0478]|35|6")
IBAN = re.compile(r"(?<![\w-])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,38}(?![\w-])")
IBAN_HEAD = re.compile(r"(?<![\w-])[A-Za-z]{2}\d{2} ?(?:[A-Za-z0-9]{4} ?)*$")
SSN = re.compile(r"(?<![\w-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])")
# Numbers the SSA says were never valid though they follow the rules (published in ads).
SSN_INVALID = {"078051120", "219099999"}
IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\.?\w)")
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
    r"(?![\w:])")
# "v1.2.3.4", "version 4.2.1.0": four-part version numbers are IP-shaped; their prefix says so.
VERSION_CONTEXT = re.compile(r"(?i)(?:\bv|\bversions?|\bver\.?|\brelease|\bbuild)\s*$")


class PIIPattern(BaseModel):
    """A custom entity: `label` (upper-case, e.g. EMPLOYEE_ID) and a Python regex."""

    model_config = ConfigDict(extra="forbid")

    label: str
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from None
        return value


class PIIOptions(GuardOptions):
    action: Literal["block", "redact", "pseudonymize", "flag"] = "redact"
    # The built-in entities to look for; PERSON only when asked and a local NER model exists.
    entities: list[Literal[ENTITIES]] = list(BUILTIN)  # type: ignore[valid-type]
    patterns: list[PIIPattern] = []
    # Phone numbers written without +country code are read as this country's (ISO 3166 code).
    phone_region: str = "US"
    # The spaCy pipeline PERSON uses; it must be installed (pip), it is never downloaded.
    ner_model: str = "en_core_web_sm"
    # Characters a stream keeps back; raise it when a custom pattern matches longer texts.
    holdback: int = HOLDBACK


class PIIGuard:
    kind: ClassVar[str] = "pii"
    Options: ClassVar[type[GuardOptions]] = PIIOptions

    def __init__(self, name: str, options: PIIOptions, runtime: Any = None) -> None:
        self.name = name
        self.options = options
        self.holdback = options.holdback
        wanted = set(options.entities)
        self._finders = [f for label, f in _FINDERS.items() if label in wanted]
        self._finders += [_custom(p) for p in options.patterns]
        if "PERSON" in wanted:
            self._finders.append(_person_finder(options.ner_model))
        self._region = options.phone_region.upper()

    def find(self, text: str) -> list[Match]:
        found: list[Match] = []
        for finder in self._finders:
            found.extend(finder(text, self._region))
        return resolve_overlaps(found)

    async def check(self, text: str, ctx: GuardContext) -> Verdict:
        return verdict_from_matches(self, self.find(text))


def resolve_overlaps(matches: list[Match]) -> list[Match]:
    """Keep one match where several overlap: the longest, then the higher-priority entity."""
    ranked = sorted(matches, key=lambda m: (-(m.end - m.start), PRIORITY.get(m.label, 99)))
    kept: list[Match] = []
    for m in ranked:
        if all(m.end <= k.start or m.start >= k.end for k in kept):
            kept.append(m)
    return sorted(kept, key=lambda m: m.start)


def _emails(text: str, region: str) -> list[Match]:
    if "@" not in text:
        return []
    return [Match(m.start(), m.end(), "EMAIL") for m in EMAIL.finditer(text)]


def _phones(text: str, region: str) -> list[Match]:
    out = []
    for m in PHONE.finditer(text):
        if IBAN_HEAD.search(text, max(0, m.start() - 40), m.start()):
            continue  # digit groups inside an IBAN-shaped string
        # The pattern may have taken a neighbouring number too ("room 12 415-555-2671"): try
        # the whole run, then the pieces left when cutting at a space, but only pieces written
        # with a phone's own punctuation, so that no phone is read inside a run of digit groups
        # (a bad IBAN's "2188 3490 83").
        run = m.group()
        cuts = [i for i, c in enumerate(run) if c == " "]
        spans = [(0, len(run))] + [(0, c) for c in reversed(cuts)]
        spans += [(c + 1, len(run)) for c in cuts]
        for a, b in spans:
            if (a, b) != (0, len(run)) and not any(c in "-.()+" for c in run[a:b]):
                continue
            if _is_phone(run[a:b], region):
                out.append(Match(m.start() + a, m.start() + b, "PHONE"))
                break
    return out


def _is_phone(candidate: str, region: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if digits < 7 or digits > 15 or DATE.fullmatch(candidate):
        return False
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(candidate, region))
    except phonenumbers.NumberParseException:
        return False


def _cards(text: str, region: str) -> list[Match]:
    out = []
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if IBAN_HEAD.search(text, max(0, m.start() - 40), m.start()):
            continue  # the tail of an IBAN-shaped string (one with a bad checksum)
        if CARD_PREFIX.match(digits) and luhn.is_valid(digits):
            out.append(Match(m.start(), m.end(), "CREDIT_CARD"))
    return out


def _ibans(text: str, region: str) -> list[Match]:
    out = []
    for m in IBAN.finditer(text):
        # The pattern may have swallowed a following word ("... 0130 00 EUR"): try the longest
        # prefix ending at a group boundary that validates.
        candidate = m.group()
        while candidate:
            if stdnum_iban.is_valid(candidate.replace(" ", "").upper()):
                out.append(Match(m.start(), m.start() + len(candidate), "IBAN"))
                break
            cut = candidate.rfind(" ")
            candidate = candidate[:cut] if cut > 0 else ""
    return out


def _ssns(text: str, region: str) -> list[Match]:
    out = []
    for m in SSN.finditer(text):
        area, _, group, serial = m.groups()
        if (area == "000" or area == "666" or area[0] == "9" or group == "00" or serial == "0000"
                or area + group + serial in SSN_INVALID):
            continue
        out.append(Match(m.start(), m.end(), "US_SSN"))
    return out


def _ips(text: str, region: str) -> list[Match]:
    out = []
    if "." in text:
        for m in IPV4.finditer(text):
            if VERSION_CONTEXT.search(text, max(0, m.start() - 12), m.start()):
                continue
            if _is_ip(m.group()):
                out.append(Match(m.start(), m.end(), "IP_ADDRESS"))
    if "::" in text or text.count(":") >= 7:
        for m in IPV6.finditer(text):
            # a bare "::" is C++ or Ruby, not an address
            if m.group().strip(":") and _is_ip(m.group()):
                out.append(Match(m.start(), m.end(), "IP_ADDRESS"))
    return out


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


_FINDERS = {"EMAIL": _emails, "PHONE": _phones, "CREDIT_CARD": _cards, "IBAN": _ibans,
            "US_SSN": _ssns, "IP_ADDRESS": _ips}


def _custom(pattern: PIIPattern):
    compiled, label = re.compile(pattern.regex), pattern.label.upper()

    def find(text: str, region: str) -> list[Match]:
        return [Match(m.start(), m.end(), label) for m in compiled.finditer(text)
                if m.end() > m.start()]
    return find


def _person_finder(model: str):
    """PERSON via a locally installed spaCy pipeline; refused at start when there is none."""
    try:
        import spacy
        import spacy.util
    except ImportError:
        raise ConfigError(
            "pii: entity PERSON needs spaCy and a named-entity pipeline installed "
            f"(pip install spacy {model}); Keel never downloads models") from None
    if not spacy.util.is_package(model):
        raise ConfigError(
            f"pii: entity PERSON needs the spaCy pipeline {model!r} installed as a package "
            f"(pip install {model}); Keel never downloads models")
    nlp = spacy.load(model, exclude=["parser", "lemmatizer", "textcat"])

    def find(text: str, region: str) -> list[Match]:
        return [Match(e.start_char, e.end_char, "PERSON") for e in nlp(text).ents
                if e.label_ == "PERSON"]
    return find
