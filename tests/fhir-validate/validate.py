#!/usr/bin/env python3
"""Independent validator for Kerbside's `$summary` documents (FHIR R4 IPS-shaped Bundles).

Reads Bundles from files or stdin ('-', the default): NDJSON, one Bundle a line, or a file
holding one JSON Bundle. Each Bundle is checked

1. against the FHIR R4B models of the PyPI package `fhir.resources` (R4B is R4 with the same
   resources for everything Kerbside exports): structure, cardinality, required elements,
   primitive formats, choice types;
2. for FHIR JSON rules the models let through: no null, no empty string, array or object;
3. for the R4 and IPS invariants below, written here from the specification (not from
   Kerbside's code), so the export is checked by something that does not share its mistakes:

   - bdl-7   fullUrl unique in the Bundle
   - bdl-9/10/11 a document has an identifier, a timestamp and a Composition first
   - ref     every `reference` resolves to an entry's fullUrl (`#id` to a contained resource)
   - cmp-1/2 a section has text, entries or sections; emptyReason only when it has no entries
   - ips-cmp Composition.author and custodian are references that resolve to entries
             (custodian to an Organization); the IPS sections allergies 48765-2, medications
             10160-0 and problems 11450-4 are present, each with entries or an emptyReason
   - org-1   an Organization has a name or an identifier
   - ips-pat Patient.name is not empty; each name has text, family or given
   - mr      MedicationRequest.intent is present
   - ips-ms  MedicationStatement has effective[x] (a value, or `_effectiveDateTime` /
             `_effectivePeriod` carrying the data-absent-reason extension)
   - ait-1/2 AllergyIntolerance has clinicalStatus unless verificationStatus is
             entered-in-error, and none when it is
   - ppc-1   Consent has policy or policyRule
   - ppc-4   a Consent of scope adr has a patient
   - dnacpr  a Consent that records a resuscitation decision (its provisions name CPR, SNOMED
             89666000 / 439569004 / 410415008, or a resuscitation situation 450476008 /
             304253006 / 304252001) states provision.type on the provision naming it or an
             ancestor, or says why not (`_type` with data-absent-reason)

Prints one line per failure (`where: rule: message`) and `N passed, M failed` as its last line
(N and M count Bundles); exits 1 when any failed, 2 when fhir.resources is missing.
"""

import argparse
import json
import sys

DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
IPS_SECTIONS = {
    "48765-2": "allergies",
    "10160-0": "medications",
    "11450-4": "problems",
}
CPR_CODES = {"89666000", "439569004", "410415008"}
RESUS_SITUATIONS = {"450476008", "304253006", "304252001"}


def load_model():
    try:
        from fhir.resources.R4B.bundle import Bundle  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - reported to the caller
        print(f"fhir.resources (R4B models) is not installed: {e}", file=sys.stderr)
        sys.exit(2)

    def validate(obj):
        if hasattr(Bundle, "model_validate"):  # fhir.resources 7+ (pydantic 2)
            return Bundle.model_validate(obj)
        return Bundle.parse_obj(obj)  # fhir.resources 6 (pydantic 1)

    return validate


def read_documents(paths):
    """(where, text) for every Bundle in the inputs."""
    for path in paths or ["-"]:
        name = "stdin" if path == "-" else path
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        stripped = text.strip()
        if not stripped:
            continue
        lines = [(i, l) for i, l in enumerate(text.splitlines(), 1) if l.strip()]
        try:
            json.loads(lines[0][1])
        except json.JSONDecodeError:
            yield name, stripped  # one pretty-printed Bundle, not NDJSON
            continue
        for i, line in lines:
            yield f"{name}:{i}", line


def codings(cc):
    if not isinstance(cc, dict):
        return []
    return [c for c in cc.get("coding") or [] if isinstance(c, dict)]


def has_code(cc, system, code):
    return any(c.get("system") == system and c.get("code") == code for c in codings(cc))


def has_dar(element):
    return isinstance(element, dict) and any(
        isinstance(x, dict) and x.get("url") == DAR for x in element.get("extension") or []
    )


def json_shape(value, path, fail):
    """FHIR JSON: no nulls, no empty strings, arrays or objects."""
    if value is None:
        fail("json", f"{path}: null")
    elif isinstance(value, str):
        if value == "" and not path.endswith(".div"):
            fail("json", f"{path}: empty string")
    elif isinstance(value, list):
        if not value:
            fail("json", f"{path}: empty array")
        for i, x in enumerate(value):
            json_shape(x, f"{path}[{i}]", fail)
    elif isinstance(value, dict):
        if not value:
            fail("json", f"{path}: empty object")
        for k, x in value.items():
            json_shape(x, f"{path}.{k}", fail)


def references(value, path):
    """(path, reference string, the resource it sits in) for every Reference.reference."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            yield path, ref
        for k, x in value.items():
            if k == "contained":
                continue  # checked with their container
            yield from references(x, f"{path}.{k}")
    elif isinstance(value, list):
        for i, x in enumerate(value):
            yield from references(x, f"{path}[{i}]")


def provision_decisions(p, inherited_type, inherited_dar, path):
    """For every provision naming CPR or a resuscitation situation: (path, type known)."""
    if not isinstance(p, dict):
        return
    ty = p.get("type") or inherited_type
    dar = has_dar(p.get("_type")) or inherited_dar
    names = False
    for cc in p.get("code") or []:
        for c in codings(cc):
            if c.get("system") == SNOMED and (
                c.get("code") in CPR_CODES or c.get("code") in RESUS_SITUATIONS
            ):
                names = True
    if names:
        yield path, bool(ty) or dar
    for i, child in enumerate(p.get("provision") or []):
        yield from provision_decisions(child, ty, dar, f"{path}.provision[{i}]")


def check_invariants(doc, fail):
    if doc.get("resourceType") != "Bundle":
        fail("bundle", "not a Bundle")
        return
    if doc.get("type") != "document":
        fail("bundle", f"type is {doc.get('type')!r}, not document")
    if not isinstance(doc.get("identifier"), dict) or not doc["identifier"].get("value"):
        fail("bdl-9", "a document has an identifier with a system and value")
    if not doc.get("timestamp"):
        fail("bdl-10", "a document has a timestamp")
    entries = [e for e in doc.get("entry") or [] if isinstance(e, dict)]
    by_url = {}
    for i, e in enumerate(entries):
        url = e.get("fullUrl")
        if not url:
            fail("bdl-7", f"entry[{i}] has no fullUrl")
            continue
        if url in by_url:
            fail("bdl-7", f"entry[{i}]: fullUrl {url} is not unique")
        by_url[url] = e.get("resource") or {}
    if not entries or (entries[0].get("resource") or {}).get("resourceType") != "Composition":
        fail("bdl-11", "the first entry of a document is a Composition")
        return
    comp = entries[0]["resource"]
    subject = (comp.get("subject") or {}).get("reference")

    # Every reference resolves.
    for i, e in enumerate(entries):
        res = e.get("resource") or {}
        contained = {c.get("id") for c in res.get("contained") or [] if isinstance(c, dict)}
        for path, ref in references(res, f"entry[{i}].resource"):
            if ref.startswith("#"):
                if ref[1:] not in contained:
                    fail("ref", f"{path}: {ref} names no contained resource")
            elif ref not in by_url:
                fail("ref", f"{path}: {ref} resolves to no entry of the Bundle")

    def target(ref_obj):
        if not isinstance(ref_obj, dict) or not isinstance(ref_obj.get("reference"), str):
            return None
        return by_url.get(ref_obj["reference"])

    # Composition: author, custodian, sections.
    authors = comp.get("author") or []
    if not authors:
        fail("ips-cmp", "Composition.author is missing")
    for k, a in enumerate(authors):
        if target(a) is None:
            fail("ips-cmp", f"Composition.author[{k}] is not a reference to an entry")
    cust = target(comp.get("custodian"))
    if cust is None:
        fail("ips-cmp", "Composition.custodian is not a reference to an entry")
    elif cust.get("resourceType") != "Organization":
        fail("ips-cmp", "Composition.custodian is not an Organization")
    if subject is None or subject not in by_url:
        fail("ips-cmp", "Composition.subject does not resolve")
    elif by_url[subject].get("resourceType") != "Patient":
        fail("ips-cmp", "Composition.subject is not a Patient")
    seen = set()
    for k, s in enumerate(comp.get("section") or []):
        where = f"Composition.section[{k}]"
        has_entries = bool(s.get("entry"))
        if not (s.get("text") or has_entries or s.get("section")):
            fail("cmp-1", f"{where}: no text, entries or sections")
        if has_entries and s.get("emptyReason"):
            fail("cmp-2", f"{where}: emptyReason on a section with entries")
        for loinc, what in IPS_SECTIONS.items():
            if has_code(s.get("code"), LOINC, loinc):
                seen.add(loinc)
                if not has_entries and not s.get("emptyReason"):
                    fail("ips-cmp", f"{where} ({what}): empty without an emptyReason")
    for loinc, what in IPS_SECTIONS.items():
        if loinc not in seen:
            fail("ips-cmp", f"the IPS {what} section ({loinc}) is missing")

    # Resources.
    for i, e in enumerate(entries):
        r = e.get("resource") or {}
        rt = r.get("resourceType")
        where = f"entry[{i}] {rt}"
        if rt == "Organization":
            if not r.get("name") and not r.get("identifier"):
                fail("org-1", f"{where}: neither name nor identifier")
        elif rt == "Patient":
            names = r.get("name") or []
            if not names:
                fail("ips-pat", f"{where}: no name")
            for k, n in enumerate(names):
                if not (n.get("text") or n.get("family") or n.get("given")):
                    fail("ips-pat", f"{where}: name[{k}] has no text, family or given")
        elif rt == "MedicationRequest":
            if not r.get("intent"):
                fail("mr", f"{where}: no intent")
        elif rt == "MedicationStatement":
            if not (
                r.get("effectiveDateTime")
                or r.get("effectivePeriod")
                or has_dar(r.get("_effectiveDateTime"))
                or has_dar(r.get("_effectivePeriod"))
            ):
                fail("ips-ms", f"{where}: no effective[x] and no data-absent-reason for it")
        elif rt == "AllergyIntolerance":
            eie = has_code(r.get("verificationStatus"), ALLERGY_VERIFICATION, "entered-in-error")
            if not eie and "clinicalStatus" not in r:
                fail("ait-1", f"{where}: no clinicalStatus (verificationStatus is not entered-in-error)")
            if eie and "clinicalStatus" in r:
                fail("ait-2", f"{where}: clinicalStatus with verificationStatus entered-in-error")
        elif rt == "Consent":
            if not r.get("policy") and not r.get("policyRule"):
                fail("ppc-1", f"{where}: neither policy nor policyRule")
            if has_code(r.get("scope"), CONSENT_SCOPE, "adr") and not r.get("patient"):
                fail("ppc-4", f"{where}: scope adr without a patient")
            for path, known in provision_decisions(r.get("provision"), None, False, "provision"):
                if not known:
                    fail(
                        "dnacpr",
                        f"{where}: {path} records a resuscitation decision without provision.type",
                    )


def _sample():
    """A small valid IPS-shaped document, written here by hand (not by Kerbside)."""
    pat, org, comp = "urn:uuid:00000000-0000-4000-8000-000000000001", "urn:uuid:00000000-0000-4000-8000-000000000002", "urn:uuid:00000000-0000-4000-8000-000000000003"
    mr, ms, ai, co = (f"urn:uuid:00000000-0000-4000-8000-00000000001{i}" for i in range(4))
    snomed = lambda code, display: {"coding": [{"system": SNOMED, "code": code, "display": display}]}
    div = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
    section = lambda code, refs: dict(
        {"title": code, "code": {"coding": [{"system": LOINC, "code": code}]}, "text": div},
        **({"entry": [{"reference": r} for r in refs]} if refs else {"emptyReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}]}}),
    )
    return {
        "resourceType": "Bundle", "type": "document", "timestamp": "2026-12-04T12:00:00Z",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:00000000-0000-4000-8000-0000000000ff"},
        "entry": [
            {"fullUrl": comp, "resource": {
                "resourceType": "Composition", "status": "final", "date": "2026-12-04T12:00:00Z",
                "type": {"coding": [{"system": LOINC, "code": "60591-5"}]}, "title": "Summary",
                "subject": {"reference": pat}, "author": [{"reference": org}], "custodian": {"reference": org},
                "section": [section("48765-2", [ai]), section("10160-0", [mr, ms]), section("11450-4", []),
                            section("42348-3", [co])]}},
            {"fullUrl": pat, "resource": {"resourceType": "Patient", "name": [{"family": "Test"}], "gender": "unknown"}},
            {"fullUrl": org, "resource": {"resourceType": "Organization", "name": "Test hub"}},
            {"fullUrl": mr, "resource": {"resourceType": "MedicationRequest", "status": "active", "intent": "plan",
                "medicationCodeableConcept": {"text": "Warfarin"}, "subject": {"reference": pat}}},
            {"fullUrl": ms, "resource": {"resourceType": "MedicationStatement", "status": "active",
                "medicationCodeableConcept": {"text": "Aspirin"}, "subject": {"reference": pat},
                "effectivePeriod": {"start": "2020"}}},
            {"fullUrl": ai, "resource": {"resourceType": "AllergyIntolerance", "patient": {"reference": pat},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                "code": snomed("716186003", "No known allergy")}},
            {"fullUrl": co, "resource": {"resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "adr"}]},
                "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}], "patient": {"reference": pat},
                "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
                "provision": {"type": "deny", "code": [snomed("89666000", "Cardiopulmonary resuscitation")]}}},
        ],
    }


def self_test():
    """The sample passes; each way of breaking a rule is caught by that rule."""
    validate = load_model()

    def problems(doc):
        out = []
        try:
            validate(doc)
        except Exception as e:
            out.append("fhir.resources")
        fail = lambda rule, msg: out.append(rule)
        json_shape(doc, "Bundle", fail)
        check_invariants(doc, fail)
        return out

    def res(doc, rt):
        return next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == rt)

    def comp(doc):
        return doc["entry"][0]["resource"]

    breaks = {
        "mr": lambda d: res(d, "MedicationRequest").pop("intent"),
        "ips-ms": lambda d: res(d, "MedicationStatement").pop("effectivePeriod"),
        "ait-1": lambda d: res(d, "AllergyIntolerance").pop("clinicalStatus"),
        "ppc-1": lambda d: res(d, "Consent").pop("policyRule"),
        "dnacpr": lambda d: res(d, "Consent")["provision"].pop("type"),
        "ips-pat": lambda d: res(d, "Patient").__setitem__("name", [{"use": "usual"}]),
        "ips-cmp": lambda d: comp(d).__setitem__("author", [{"display": "Kerbside hub"}]),
        "ref": lambda d: res(d, "MedicationStatement").__setitem__("subject", {"reference": "urn:uuid:nowhere"}),
        "bdl-7": lambda d: d["entry"][-1].__setitem__("fullUrl", d["entry"][-2]["fullUrl"]),
        "json": lambda d: res(d, "Patient").__setitem__("birthDate", None),
        "cmp-2": lambda d: comp(d)["section"][0].__setitem__("emptyReason", {"text": "x"}),
        "org-1": lambda d: res(d, "Organization").pop("name"),
    }
    missing_section = lambda d: comp(d).__setitem__("section", comp(d)["section"][:2] + comp(d)["section"][3:])
    ok = True
    base = problems(_sample())
    if base:
        print(f"self-test: the sample fails: {base}")
        ok = False
    for rule, brk in list(breaks.items()) + [("ips-cmp", missing_section)]:
        doc = _sample()
        brk(doc)
        found = problems(doc)
        if rule not in found:
            print(f"self-test: breaking {rule} was not caught (found {found})")
            ok = False
    no_status = _sample()
    res(no_status, "Consent").pop("status")
    if "fhir.resources" not in problems(no_status):
        print("self-test: a Consent without status passed fhir.resources")
        ok = False
    print("self-test " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="NDJSON or JSON files ('-' or none: stdin)")
    ap.add_argument("--quiet", action="store_true", help="print only the summary line")
    ap.add_argument(
        "--self-test", action="store_true", help="check that every rule catches what it should"
    )
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    validate = load_model()
    passed = failed = 0
    for where, text in read_documents(args.files):
        problems = []

        def fail(rule, msg, problems=problems):
            problems.append(f"{rule}: {msg}")

        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            fail("json", f"not JSON: {e}")
            doc = None
        if doc is not None:
            label = where
            ident = (doc.get("identifier") or {}).get("value") if isinstance(doc, dict) else None
            if ident:
                label = f"{where} ({ident})"
            where = label
            try:
                validate(doc)
            except Exception as e:  # pydantic.ValidationError, or a model's own ValueError
                errors = getattr(e, "errors", None)
                if callable(errors):
                    for err in errors():
                        loc = ".".join(str(x) for x in err.get("loc", ()))
                        fail("fhir.resources", f"{loc or 'Bundle'}: {err.get('msg')}")
                else:
                    fail("fhir.resources", str(e).replace("\n", " "))
            json_shape(doc, "Bundle", fail)
            if isinstance(doc, dict):
                check_invariants(doc, fail)
        if problems:
            failed += 1
            if not args.quiet:
                for p in problems:
                    print(f"{where}: {p}")
        else:
            passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
