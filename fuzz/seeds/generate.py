#!/usr/bin/env python3
"""Regenerates the seed inputs in fuzz/seeds/TARGET/ (see docs/fuzzing.md).

Run from anywhere: `python3 fuzz/seeds/generate.py`. The FHIR bundles follow the shapes in
proto/tests/fhir.rs; the sync frames are hand-encoded CBOR of `ToHub`/`ToUnit` messages
(4-byte big-endian length prefix, the pull stream raw-deflated with a sync flush per
message); the supervisor frames follow firmware/src/proto (header, CRC-16/IBM-3740, COBS, 0x00).
The first byte of every sync_wire and supervisor_frame seed is the chunk size the target uses.
"""
import os

os.chdir(os.path.dirname(os.path.abspath(__file__)))
for d in ("fhir_ingest", "lan_query", "sync_wire", "supervisor_frame"):
    os.makedirs(d, exist_ok=True)

# ---- fhir_ingest and lan_query
import json
NHS="9990000018"
OPS="https://fhir.nhs.uk/Id/ods-organization-code"
def patient(nhs, updated):
    return {"fullUrl":"urn:uuid:p1","resource":{"resourceType":"Patient","id":"p1","meta":{"lastUpdated":updated},
      "identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":nhs,
        "extension":[{"url":"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
          "valueCodeableConcept":{"coding":[{"system":"https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland","code":"01"}]}}]}],
      "name":[{"use":"official","family":"Okafor","given":["Zoë","Ada"]}],"gender":"female","birthDate":"1941-03-07",
      "address":[{"postalCode":"SE5 8AF"}],"generalPractitioner":[{"identifier":{"system":OPS,"value":"G85001"}}]}}
def provenance(ods,name,targets):
    return {"fullUrl":f"urn:uuid:prov-{ods}","resource":{"resourceType":"Provenance","target":[{"reference":t} for t in targets],
      "recorded":"2024-11-02T10:00:00Z","agent":[{"who":{"identifier":{"system":OPS,"value":ods},"display":name}}]}}
def allergy(id,code,text,updated,version):
    c={}
    if code: c["coding"]=[{"system":"http://snomed.info/sct","code":code[0],"display":code[1]}]
    if text: c["text"]=text
    return {"fullUrl":f"urn:uuid:{id}","resource":{"resourceType":"AllergyIntolerance","id":id,
      "meta":{"versionId":version,"lastUpdated":updated,"source":"urn:kerbside:system:emis-web"},
      "clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical","code":"active"}]},
      "verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-verification","code":"confirmed"}]},
      "category":["medication"],"criticality":"high","code":c,"patient":{"reference":"urn:uuid:p1"},"recordedDate":"2019-12-10",
      "reaction":[{"manifestation":[{"coding":[{"system":"http://snomed.info/sct","code":"39579001","display":"Anaphylaxis"}]}],"severity":"severe"}]}}
def bundle(entries):
    return {"resourceType":"Bundle","type":"collection","timestamp":"2024-11-02T10:00:00Z","entry":entries}
med1={"fullUrl":"urn:uuid:m1","resource":{"resourceType":"MedicationStatement","id":"m1","status":"active",
  "meta":{"versionId":"2","lastUpdated":"2024-05-01T08:00:00Z","source":"urn:kerbside:system:emis-web"},
  "medicationCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"319740004","display":"Warfarin 1mg tablets"}]},
  "subject":{"reference":"urn:uuid:p1"},"effectivePeriod":{"start":"2020-01-01"},
  "dosage":[{"text":"As directed by anticoagulant clinic","route":{"coding":[{"system":"http://snomed.info/sct","code":"26643006","display":"Oral"}]}}],
  "extension":[{"url":"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationStatementLastIssueDate","valueDateTime":"2024-04-20"}],
  "informationSource":{"identifier":{"system":OPS,"value":"G85001"}}}}
med2={"fullUrl":"urn:uuid:m2","resource":{"resourceType":"MedicationStatement","id":"m2","status":"active",
  "meta":{"lastUpdated":"2024-05-01T08:00:00Z"},"medicationCodeableConcept":{"text":"Herbal remedy (brought in by family)"},
  "subject":{"reference":"urn:uuid:p1"}}}
cond={"fullUrl":"urn:uuid:c1","resource":{"resourceType":"Condition","id":"c1","meta":{"lastUpdated":"2023-02-01T08:00:00Z"},
  "clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},
  "code":{"coding":[{"system":"http://snomed.info/sct","code":"49436004","display":"Atrial fibrillation"}]},
  "subject":{"reference":"urn:uuid:p1"},"onsetDateTime":"2019",
  "extension":[{"url":"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ProblemSignificance","valueCode":"major"}]}}
consent={"fullUrl":"urn:uuid:r1","resource":{"resourceType":"Consent","id":"r1","status":"active","meta":{"lastUpdated":"2024-06-01T08:00:00Z"},
  "scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"adr"}]},
  "category":[{"coding":[{"system":"http://loinc.org","code":"75320-2"}]}],"patient":{"reference":"urn:uuid:p1"},"dateTime":"2024-05-30",
  "performer":[{"display":"Dr A Consultant"}],
  "provision":{"code":[{"coding":[{"system":"http://snomed.info/sct","code":"450476008","display":"Not for attempted cardiopulmonary resuscitation"}]}],"period":{"end":"2025-05-30"}}}}
docref={"fullUrl":"urn:uuid:d1","resource":{"resourceType":"DocumentReference","id":"d1","status":"current","meta":{"lastUpdated":"2024-06-01T08:00:00Z"},
  "type":{"coding":[{"system":"http://snomed.info/sct","code":"1382601000000107","display":"ReSPECT form"}]},
  "subject":{"reference":"urn:uuid:p1"},"date":"2024-05-30T10:00:00Z","custodian":{"identifier":{"system":OPS,"value":"RJ1"}},
  "description":"Preferred place of care: home. Ceiling of treatment: ward-based care.",
  "content":[{"attachment":{"url":"https://ucp.example.invalid/plan/123"}}]}}
flag={"fullUrl":"urn:uuid:f1","resource":{"resourceType":"Flag","id":"f1","status":"active","meta":{"lastUpdated":"2024-06-01T08:00:00Z"},
  "code":{"text":"Profoundly deaf: uses BSL"},"subject":{"reference":"urn:uuid:p1"},"period":{"start":"2022-01-01"}}}
obs={"fullUrl":"urn:uuid:o1","resource":{"resourceType":"Observation","id":"o1"}}
a1=allergy("a1",("91936005","Allergy to penicillin"),None,"2024-03-01T09:00:00Z","1")
a2=allergy("a2",None,"Reacts badly to sticking plasters","2024-03-02T09:00:00Z","1")
p=patient(NHS,"2024-01-01T00:00:00Z")
seeds={
 "rich.json": bundle([p,a1,a2,med1,med2,cond,consent,docref,flag,obs,
    provenance("G85001","The Surgery",["urn:uuid:a1","urn:uuid:a2","urn:uuid:m1","urn:uuid:m2","urn:uuid:c1"]),
    provenance("RJ1","Guy's and St Thomas'",["urn:uuid:r1","urn:uuid:d1","urn:uuid:f1"])]),
 "patient-only.json": bundle([p]),
 "allergies.json": bundle([p,a1,a2,provenance("G85001","The Surgery",["urn:uuid:a1","urn:uuid:a2"])]),
 "medications.json": bundle([p,med1,med2]),
 "condition.json": bundle([p,cond]),
 "consent-docref-flag.json": bundle([p,consent,docref,flag,provenance("RJ1","Guy's and St Thomas'",["urn:uuid:r1","urn:uuid:d1","urn:uuid:f1"])]),
}
# The fhir_ingest target reads its first byte as flags (1: a feed default source, 2: snapshot
# feed, 4: an ingest time), the rest as the bundle.
def fhir_seed(name, v, flags=5):
    open(f"fhir_ingest/{name}","wb").write(bytes([flags]) + json.dumps(v,ensure_ascii=False,separators=(",",":")).encode())
for k,v in seeds.items():
    fhir_seed(k, v)
# Every bundle of the real-feed corpus (tests/corpus) under 64 KiB, with its step's feed flags.
corpus = os.path.join("..", "..", "tests", "corpus")
for f in sorted(os.listdir(corpus)):
    if not f.endswith(".json"):
        continue
    case = json.load(open(os.path.join(corpus, f), encoding="utf-8"))
    for i, step in enumerate(case["steps"]):
        bundles = step["ingest"] if isinstance(step["ingest"], list) else [step["ingest"]]
        flags = 4 | (1 if step.get("source") else 0) | (2 if step.get("snapshot") else 0)
        for j, b in enumerate(bundles):
            if len(json.dumps(b)) < 65536:
                fhir_seed(f"corpus-{f[:-5]}-{i}-{j}.json", b, flags)
lan={
 "family-dob": "family=Okafor&birth_date=1941-03-07",
 "all-four": "family=Okafor&given=Zo%C3%AB+Ada&birth_date=1941-03-07&postcode=SE5+8AF",
 "district": "family=O%27Brien&postcode=SE5",
 "nhs": "9990000018",
 "nhs-spaced": "999 000 0018",
}
for k,v in lan.items():
    open(f"lan_query/{k}","w").write(v)

# ---- sync_wire
import struct, zlib
def head(major, n):
    if n < 24: return bytes([major<<5 | n])
    if n < 256: return bytes([major<<5 | 24, n])
    if n < 65536: return bytes([major<<5 | 25]) + struct.pack(">H", n)
    if n < 2**32: return bytes([major<<5 | 26]) + struct.pack(">I", n)
    return bytes([major<<5 | 27]) + struct.pack(">Q", n)
def enc(v):
    if isinstance(v, bool): return bytes([0xf5 if v else 0xf4])
    if isinstance(v, int): return head(0, v)
    if isinstance(v, str):
        b = v.encode(); return head(3, len(b)) + b
    if isinstance(v, list): return head(4, len(v)) + b"".join(enc(x) for x in v)
    if isinstance(v, dict): return head(5, len(v)) + b"".join(enc(k)+enc(x) for k,x in v.items())
    raise TypeError(v)
def frame(v):
    b = enc(v); return struct.pack(">I", len(b)) + b
plain = frame({"ack": {"upto_batch": 7}}) + frame({"fetch": {"request_id": 1, "nhs": "9990000018"}}) + frame({"audit": {"events": []}})
def deflate_stream(msgs):
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = b""
    for m in msgs:
        out += z.compress(frame(m)) + z.flush(zlib.Z_SYNC_FLUSH)
    return out
unit = deflate_stream([{"live": {"head_seq": 42}}, {"refused": {"code": "overloaded", "message": "retry later"}},
                       {"audit_ack": {"upto_seq": 9, "problems": ["gap at 3"]}}, {"wipe": {"reason": "stolen"}}])
for chunk in (255, 1, 7):
    open(f"sync_wire/to_hub_plain_chunk{chunk}", "wb").write(bytes([chunk]) + plain)
    open(f"sync_wire/to_unit_deflate_chunk{chunk}", "wb").write(bytes([chunk]) + unit)

# ---- supervisor_frame
import struct
def crc16(data):
    crc = 0xffff
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xffff if crc & 0x8000 else (crc << 1) & 0xffff
    return crc
assert crc16(b"123456789") == 0x29B1
def cobs(src):
    out = bytearray([0]); code_at = 0; code = 1
    for b in src:
        if b == 0:
            out[code_at] = code; code_at = len(out); out.append(0); code = 1
        else:
            out.append(b); code += 1
            if code == 0xff:
                out[code_at] = code; code_at = len(out); out.append(0); code = 1
    out[code_at] = code
    return bytes(out)
def frame(seq, kind, payload=b""):
    body = bytes([1]) + struct.pack("<H", seq) + bytes([kind]) + payload
    return cobs(body + struct.pack("<H", crc16(body))) + b"\x00"
host = frame(0, 0x41, b"\x01") + frame(1, 0x43, b"\x01") + frame(2, 0x44) + frame(3, 0x46) + frame(256, 0x47, struct.pack("<H", 7))
mcu = (frame(0, 0x01, b"\x01\x02\x00\x03\x01") + frame(1, 0x03, b"\x00") + frame(2, 0x05, struct.pack("<I", 1500))
       + frame(3, 0x06) + frame(4, 0x07, struct.pack("<H", 11200)) + frame(5, 0x08) + frame(0, 0x09, b"\x00\x00"))
for chunk in (255, 1, 5):
    open(f"supervisor_frame/host_to_mcu_chunk{chunk}", "wb").write(bytes([chunk]) + host)
    open(f"supervisor_frame/mcu_to_host_chunk{chunk}", "wb").write(bytes([chunk]) + mcu)
