#!/usr/bin/env python3
"""NHS numbers for the ingest corpus, and a check of the corpus files.

    python3 tests/corpus/nhs.py gen 9991000000 20   # 20 valid test numbers from 999 100 0000 up
    python3 tests/corpus/nhs.py check               # every file parses; every 999… number is
                                                    # valid and used by one case file only

NHS numbers: ten digits, the tenth a Modulus 11 check digit (weights 10..2 on digits 1-9,
c = 11 - (sum mod 11); 11 -> 0; 10 -> never issued). The corpus only uses the 999 test range.
"""
import json
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent


def check_digit(first9: str):
    total = sum(int(d) * w for d, w in zip(first9, range(10, 1, -1)))
    c = 11 - (total % 11)
    if c == 11:
        return 0
    if c == 10:
        return None
    return c


def valid(nhs: str) -> bool:
    if not re.fullmatch(r"\d{10}", nhs) or len(set(nhs)) == 1:
        return False
    return check_digit(nhs[:9]) == int(nhs[9])


def gen(start: int, count: int):
    out = []
    n = start // 10
    while len(out) < count:
        s = f"{n:09d}"
        c = check_digit(s)
        if c is not None and len(set(s + str(c))) > 1:
            out.append(s + str(c))
        n += 1
    return out


def check() -> int:
    bad = 0
    owner = {}
    files = sorted(HERE.glob("*.json"))
    for f in files:
        text = f.read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            print(f"{f.name}: not JSON: {e}")
            bad += 1
            continue
        for key in ("case", "about", "steps", "expect"):
            if key not in doc:
                print(f"{f.name}: no {key!r}")
                bad += 1
        for num in set(re.findall(r"(?<!\d)999\d{7}(?!\d)", text)):
            if not valid(num):
                print(f"{f.name}: {num} fails the Modulus 11 check")
                bad += 1
            if num in owner and owner[num] != f.name:
                print(f"{f.name}: {num} is also used by {owner[num]}")
                bad += 1
            owner.setdefault(num, f.name)
    print(f"{len(files)} files, {len(owner)} NHS numbers, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "gen":
        start = int(sys.argv[2]) if len(sys.argv) > 2 else 9991000000
        count = int(sys.argv[3]) if len(sys.argv) > 3 else 10
        print("\n".join(gen(start, count)))
    else:
        sys.exit(check())
