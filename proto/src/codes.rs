//! Curated clinical code lists: the small, fixed vocabulary Kerbside needs without a
//! terminology server.
//!
//! What lives here, and why:
//!
//! * "no known …" markers ([`no_known_marker`], [`no_known_section`]): the SNOMED CT situation
//!   codes a source uses to assert that a section is positively empty. They turn a section into
//!   `none_known` rather than an entry; confusing them with "no information" is the single most
//!   safety-relevant mistake a summary can make.
//! * the high-risk medicine classes ([`HighRiskClass`], [`high_risk_class`]) the crew's screen
//!   emphasises: by known dm+d / SNOMED code first, else by keyword in the recorded text, so a
//!   narrative-only "warfarin as per INR clinic" is still flagged.
//! * common allergens, reactions, medicines (dm+d), long-term conditions, resuscitation
//!   decisions, care-plan types and alert texts, used by `edge-hub synth` to produce realistic
//!   data and by the UI for ordering. Nothing here is exhaustive; codes not listed pass through
//!   verbatim with their display text.
//!
//! Sources (all public; checked 2025–2026):
//!
//! * "No known …" situations: HL7 IPS concept map `ConceptMap-absence-to-snomed-uv-ips`
//!   (HL7/fhir-ips) — 716186003, 409137002, 429625007, 428607008, 787481004, 160245001.
//! * dm+d (NHSBSA Dictionary of Medicines and Devices; SNOMED CT UK Drug Extension) VMP/AMP ids,
//!   with names exactly as dm+d spells them, taken from OpenSAFELY codelists built from dm+d
//!   (opencodelists.org; e.g. `opensafely/direct-acting-oral-anticoagulants-doac`,
//!   `opensafely/warfarin`, `opensafely/antiplatelets`, `opensafely/insulin-medication`,
//!   `opensafely/opioid-containing-medicines-*`, `opensafely/asthma-oral-prednisolone-medication`,
//!   PINCER `lith` and `met`, Bristol `statins-dmd` and `proton-pump-inhibitors-dmd`), the
//!   UoM gm-sde clinical code sets, NHS Digital's dm+d FHIR examples (317972000
//!   Furosemide 40mg tablets) and the Spine EPS prescription-tracker API examples (320000009
//!   Simvastatin 40mg tablets, 374296008 Levothyroxine sodium 100microgram tablets, 408063002
//!   Beclometasone 100micrograms/dose inhaler CFC free, 320029006 Atorvastatin 10mg tablets as
//!   its pre-2023 id). In 2023 dm+d moved many VMPs from International SNOMED ids to
//!   UK-extension ids (e.g. Apixaban 5mg tablets 703908001 → 42206511000001102); both ids are
//!   listed so records from older feeds still classify. Insulins are coded at AMP (brand) level
//!   because the MHRA advises prescribing insulin by brand.
//! * Allergy findings / substances and reactions: SNOMED CT International Edition as used in the
//!   UK Core `UKCore-AllergyIntolerance` examples (372687004 Amoxicillin, 247472004), HL7 IPS
//!   allergy value sets and Synthea's allergy module (91935009, 300913006, 418689008, …).
//! * Resuscitation: 304253006 / 304252001 (hl7germany DoNotResuscitateOrder value set) and
//!   450476008 "Not for attempted cardiopulmonary resuscitation" (UK usage for DNACPR).
//! * Care-plan types: the National Record Locator record-type value set
//!   (NHSDigital/NRLF `NRLF-RecordType-ValueSet.json`), category 734163000 "Care plan".
//! * Alert texts are illustrative free text in the style of national Reasonable Adjustment Flags
//!   and ambulance-service address warnings; they are not a code system.

use serde::{Deserialize, Serialize};

use crate::fhir::SectionKind;

/// A code with its display text (SNOMED CT unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Coded {
    pub code: &'static str,
    pub display: &'static str,
}

// ---------------------------------------------------------------------------------------------
// "No known …" markers
// ---------------------------------------------------------------------------------------------

/// A SNOMED CT situation asserting that a section is positively empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoKnown {
    /// 716186003 No known allergy.
    Allergy,
    /// 409137002 No known drug allergy.
    DrugAllergy,
    /// 429625007 No known food allergy.
    FoodAllergy,
    /// 428607008 No known environmental allergy.
    EnvironmentalAllergy,
    /// 787481004 No known medications.
    Medications,
    /// 160245001 No current problems or disability.
    Problems,
}

impl NoKnown {
    pub const ALL: [NoKnown; 6] = [
        NoKnown::Allergy,
        NoKnown::DrugAllergy,
        NoKnown::FoodAllergy,
        NoKnown::EnvironmentalAllergy,
        NoKnown::Medications,
        NoKnown::Problems,
    ];

    /// The SNOMED CT code.
    pub fn code(self) -> &'static str {
        match self {
            NoKnown::Allergy => "716186003",
            NoKnown::DrugAllergy => "409137002",
            NoKnown::FoodAllergy => "429625007",
            NoKnown::EnvironmentalAllergy => "428607008",
            NoKnown::Medications => "787481004",
            NoKnown::Problems => "160245001",
        }
    }

    /// The SNOMED CT preferred term.
    pub fn display(self) -> &'static str {
        match self {
            NoKnown::Allergy => "No known allergy",
            NoKnown::DrugAllergy => "No known drug allergy",
            NoKnown::FoodAllergy => "No known food allergy",
            NoKnown::EnvironmentalAllergy => "No known environmental allergy",
            NoKnown::Medications => "No known medications",
            NoKnown::Problems => "No current problems or disability",
        }
    }

    /// The summary section this marker empties.
    pub fn section(self) -> SectionKind {
        match self {
            NoKnown::Allergy
            | NoKnown::DrugAllergy
            | NoKnown::FoodAllergy
            | NoKnown::EnvironmentalAllergy => SectionKind::Allergies,
            NoKnown::Medications => SectionKind::Medications,
            NoKnown::Problems => SectionKind::Conditions,
        }
    }

    /// True when the marker covers only part of its section (drug, food or environmental
    /// allergies): a clinician must read it as exactly that, not as "no allergies at all".
    pub fn is_partial(self) -> bool {
        matches!(
            self,
            NoKnown::DrugAllergy | NoKnown::FoodAllergy | NoKnown::EnvironmentalAllergy
        )
    }
}

/// Which "no known …" situation a SNOMED CT code asserts, if any.
pub fn no_known_marker(code: &str) -> Option<NoKnown> {
    NoKnown::ALL.into_iter().find(|n| n.code() == code.trim())
}

/// The section a "no known …" SNOMED CT code makes `none_known`, if the code is such a marker.
pub fn no_known_section(code: &str) -> Option<SectionKind> {
    no_known_marker(code).map(NoKnown::section)
}

// ---------------------------------------------------------------------------------------------
// High-risk medicines
// ---------------------------------------------------------------------------------------------

/// Medicine classes a crew must notice at a glance (bleeding, hypoglycaemia, respiratory
/// depression, adrenal crisis, immunosuppression, seizure control, narrow therapeutic index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HighRiskClass {
    Anticoagulant,
    Antiplatelet,
    Insulin,
    Opioid,
    /// Systemic corticosteroids (adrenal suppression; steroid emergency card).
    Steroid,
    Immunosuppressant,
    Antiepileptic,
    Chemotherapy,
    Lithium,
    Methotrexate,
    Digoxin,
    /// Other medicines with a specific hazard (e.g. clozapine, amiodarone).
    Other,
}

impl HighRiskClass {
    pub const ALL: [HighRiskClass; 12] = [
        HighRiskClass::Anticoagulant,
        HighRiskClass::Antiplatelet,
        HighRiskClass::Insulin,
        HighRiskClass::Opioid,
        HighRiskClass::Steroid,
        HighRiskClass::Immunosuppressant,
        HighRiskClass::Antiepileptic,
        HighRiskClass::Chemotherapy,
        HighRiskClass::Lithium,
        HighRiskClass::Methotrexate,
        HighRiskClass::Digoxin,
        HighRiskClass::Other,
    ];

    /// A short label for a screen.
    pub fn label(self) -> &'static str {
        match self {
            HighRiskClass::Anticoagulant => "anticoagulant",
            HighRiskClass::Antiplatelet => "antiplatelet",
            HighRiskClass::Insulin => "insulin",
            HighRiskClass::Opioid => "opioid",
            HighRiskClass::Steroid => "steroid (systemic)",
            HighRiskClass::Immunosuppressant => "immunosuppressant",
            HighRiskClass::Antiepileptic => "antiepileptic",
            HighRiskClass::Chemotherapy => "chemotherapy",
            HighRiskClass::Lithium => "lithium",
            HighRiskClass::Methotrexate => "methotrexate",
            HighRiskClass::Digoxin => "digoxin",
            HighRiskClass::Other => "high-risk medicine",
        }
    }
}

/// The high-risk class of a medicine: by its dm+d / SNOMED CT code when the code is on a
/// high-risk list here, else by a case-insensitive keyword (generic or UK brand name) in its
/// recorded text (so code and text that disagree err on the side of flagging). `None` means
/// "not on the list", never "safe".
pub fn high_risk_class(code: Option<&str>, text: &str) -> Option<HighRiskClass> {
    code.and_then(high_risk_by_code)
        .or_else(|| high_risk_by_text(text))
}

/// The high-risk class of a known dm+d (VTM, VMP or AMP) code.
pub fn high_risk_by_code(code: &str) -> Option<HighRiskClass> {
    let code = code.trim();
    if let Some(m) = medicine(code) {
        return m.high_risk;
    }
    HIGH_RISK_VTMS
        .iter()
        .find(|v| v.code == code)
        .map(|v| v.class)
}

/// The high-risk class suggested by the words of a medicine's text (name, dosage, narrative).
pub fn high_risk_by_text(text: &str) -> Option<HighRiskClass> {
    let t = text.to_lowercase();
    let topical = TOPICAL_FORMS.iter().any(|f| t.contains(f));
    for (class, words) in HIGH_RISK_KEYWORDS {
        if topical
            && matches!(
                class,
                HighRiskClass::Steroid | HighRiskClass::Immunosuppressant
            )
        {
            continue;
        }
        if words.iter().any(|w| t.contains(w)) {
            return Some(*class);
        }
    }
    // Midazolam is a high-risk antiepileptic only as buccal / oromucosal seizure rescue.
    if t.contains("midazolam") && (t.contains("buccal") || t.contains("oromucosal")) {
        return Some(HighRiskClass::Antiepileptic);
    }
    None
}

/// Forms that make a steroid or immunosuppressant local rather than systemic.
const TOPICAL_FORMS: &[&str] = &[
    "cream",
    "ointment",
    " gel",
    "eye drop",
    "ear drop",
    "nasal spray",
    "inhaler",
    "lotion",
    "scalp application",
    "enema",
    "suppositor",
    "foam",
];

/// Keywords per class, checked in this order (the first class that matches wins; methotrexate
/// and lithium come before the broader classes that would otherwise claim them).
const HIGH_RISK_KEYWORDS: &[(HighRiskClass, &[&str])] = &[
    (
        HighRiskClass::Methotrexate,
        &[
            "methotrexate",
            "maxtrex",
            "metoject",
            "methofill",
            "jylamvo",
            "nordimet",
            "zlatal",
            "ebetrex",
        ],
    ),
    (
        HighRiskClass::Lithium,
        &["lithium", "priadel", "camcolit", "liskonum", "li-liquid"],
    ),
    (HighRiskClass::Digoxin, &["digoxin", "lanoxin"]),
    (
        HighRiskClass::Insulin,
        &[
            "insulin",
            "lantus",
            "novorapid",
            "humalog",
            "humulin",
            "levemir",
            "tresiba",
            "toujeo",
            "abasaglar",
            "apidra",
            "fiasp",
            "novomix",
            "insulatard",
            "actrapid",
            "semglee",
            "lyumjev",
            "insuman",
            "mixtard",
            "hypurin",
        ],
    ),
    (
        HighRiskClass::Anticoagulant,
        &[
            "warfarin",
            "apixaban",
            "rivaroxaban",
            "edoxaban",
            "dabigatran",
            "acenocoumarol",
            "phenindione",
            "heparin",
            "enoxaparin",
            "dalteparin",
            "tinzaparin",
            "fondaparinux",
            "eliquis",
            "xarelto",
            "lixiana",
            "pradaxa",
            "marevan",
            "clexane",
            "inhixa",
            "fragmin",
            "innohep",
            "arixtra",
        ],
    ),
    (
        HighRiskClass::Antiplatelet,
        &[
            "clopidogrel",
            "ticagrelor",
            "prasugrel",
            "dipyridamole",
            "aspirin",
            "plavix",
            "brilique",
            "efient",
        ],
    ),
    (
        HighRiskClass::Opioid,
        &[
            "morphine",
            "oxycodone",
            "fentanyl",
            "codeine",
            "tramadol",
            "tapentadol",
            "buprenorphine",
            "methadone",
            "pethidine",
            "hydromorphone",
            "alfentanil",
            "meptazinol",
            "co-codamol",
            "co-dydramol",
            "oramorph",
            "sevredol",
            "zomorph",
            "mst continus",
            "oxynorm",
            "oxycontin",
            "shortec",
            "longtec",
            "durogesic",
            "matrifen",
            "butrans",
            "transtec",
            "targinact",
            "palexia",
            "zapain",
            "solpadol",
            "zamadol",
            "zydol",
            "physeptone",
            "espranor",
        ],
    ),
    (
        HighRiskClass::Chemotherapy,
        &[
            "chemotherapy",
            "capecitabine",
            "cyclophosphamide",
            "chlorambucil",
            "hydroxycarbamide",
            "mercaptopurine",
            "imatinib",
            "temozolomide",
            "melphalan",
            "lenalidomide",
        ],
    ),
    (
        HighRiskClass::Immunosuppressant,
        &[
            "tacrolimus",
            "ciclosporin",
            "cyclosporin",
            "mycophenol",
            "azathioprine",
            "sirolimus",
            "everolimus",
            "leflunomide",
            "adoport",
            "prograf",
            "advagraf",
            "envarsus",
            "cellcept",
            "myfortic",
            "neoral",
            "adalimumab",
            "etanercept",
            "infliximab",
            "rituximab",
            "tocilizumab",
        ],
    ),
    (
        HighRiskClass::Antiepileptic,
        &[
            "levetiracetam",
            "valproate",
            "valproic",
            "carbamazepine",
            "lamotrigine",
            "phenytoin",
            "topiramate",
            "lacosamide",
            "zonisamide",
            "clobazam",
            "phenobarbital",
            "primidone",
            "oxcarbazepine",
            "ethosuximide",
            "perampanel",
            "brivaracetam",
            "rufinamide",
            "vigabatrin",
            "keppra",
            "epilim",
            "episenta",
            "tegretol",
            "lamictal",
            "epanutin",
            "trileptal",
            "vimpat",
            "buccolam",
            "epistatus",
        ],
    ),
    (
        HighRiskClass::Steroid,
        &[
            "prednisolone",
            "prednisone",
            "hydrocortisone",
            "dexamethasone",
            "methylprednisolone",
            "fludrocortisone",
            "deflazacort",
            "plenadren",
        ],
    ),
    (
        HighRiskClass::Other,
        &[
            "clozapine",
            "clozaril",
            "denzapine",
            "zaponex",
            "amiodarone",
        ],
    ),
];

/// dm+d virtual therapeutic moieties (VTMs) for high-risk medicines, for records coded at
/// substance-product level rather than as a specific product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighRiskVtm {
    pub code: &'static str,
    pub display: &'static str,
    pub class: HighRiskClass,
}

pub static HIGH_RISK_VTMS: &[HighRiskVtm] = &[
    HighRiskVtm {
        code: "48603004",
        display: "Warfarin",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "774624002",
        display: "Apixaban",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "19510611000001104",
        display: "Apixaban",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "777455008",
        display: "Rivaroxaban",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "442539005",
        display: "Rivaroxaban",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "775732007",
        display: "Edoxaban",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "13568411000001103",
        display: "Dabigatran etexilate",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "79356008",
        display: "Acenocoumarol",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "47527007",
        display: "Phenindione",
        class: HighRiskClass::Anticoagulant,
    },
    HighRiskVtm {
        code: "16977003",
        display: "Lithium carbonate",
        class: HighRiskClass::Lithium,
    },
    HighRiskVtm {
        code: "68887009",
        display: "Methotrexate",
        class: HighRiskClass::Methotrexate,
    },
    HighRiskVtm {
        code: "10049011000001109",
        display: "Sodium valproate",
        class: HighRiskClass::Antiepileptic,
    },
];

// ---------------------------------------------------------------------------------------------
// Medicines
// ---------------------------------------------------------------------------------------------

/// SNOMED CT routes of administration (dm+d route codes where dm+d has its own).
pub mod route {
    use super::Coded;
    pub const ORAL: Coded = Coded {
        code: "26643006",
        display: "Oral",
    };
    pub const SUBCUTANEOUS: Coded = Coded {
        code: "34206005",
        display: "Subcutaneous",
    };
    pub const TRANSDERMAL: Coded = Coded {
        code: "45890007",
        display: "Transdermal",
    };
    pub const INHALATION: Coded = Coded {
        code: "18679011000001101",
        display: "Inhalation",
    };
    pub const INTRAMUSCULAR: Coded = Coded {
        code: "78421000",
        display: "Intramuscular",
    };
    pub const SUBLINGUAL: Coded = Coded {
        code: "37839007",
        display: "Sublingual",
    };
}

/// A medicine with its dm+d code (VMP, or AMP where prescribing by brand is the norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Medicine {
    /// The current dm+d id.
    pub code: &'static str,
    /// Earlier or alternative ids for the same product (dm+d `VPIDPREV`, International ids).
    pub previous: &'static [&'static str],
    /// The dm+d name.
    pub display: &'static str,
    /// A typical dosage instruction, as a GP system would print it.
    pub dosage: &'static str,
    pub route: Coded,
    pub high_risk: Option<HighRiskClass>,
}

const fn med(
    code: &'static str,
    display: &'static str,
    dosage: &'static str,
    route: Coded,
    high_risk: Option<HighRiskClass>,
) -> Medicine {
    Medicine {
        code,
        previous: &[],
        display,
        dosage,
        route,
        high_risk,
    }
}

const fn med_prev(
    code: &'static str,
    previous: &'static [&'static str],
    display: &'static str,
    dosage: &'static str,
    route: Coded,
    high_risk: Option<HighRiskClass>,
) -> Medicine {
    Medicine {
        code,
        previous,
        display,
        dosage,
        route,
        high_risk,
    }
}

use HighRiskClass as H;

const AC: Option<HighRiskClass> = Some(H::Anticoagulant);
const AP: Option<HighRiskClass> = Some(H::Antiplatelet);
const INS: Option<HighRiskClass> = Some(H::Insulin);
const OP: Option<HighRiskClass> = Some(H::Opioid);
const WARFARIN_DOSE: &str = "As directed by the anticoagulant clinic (see yellow book)";

/// Coded medicines (dm+d). Ids as listed in the sources in the module docs.
pub static MEDICINES: &[Medicine] = &[
    // anticoagulants
    med_prev(
        "42206511000001102",
        &["703908001", "21681211000001107"],
        "Apixaban 5mg tablets",
        "One tablet twice a day",
        route::ORAL,
        AC,
    ),
    med_prev(
        "42206411000001101",
        &["703907006", "19524611000001102"],
        "Apixaban 2.5mg tablets",
        "One tablet twice a day",
        route::ORAL,
        AC,
    ),
    med(
        "19842211000001107",
        "Rivaroxaban 20mg tablets",
        "One tablet once a day with food",
        route::ORAL,
        AC,
    ),
    med(
        "19842111000001101",
        "Rivaroxaban 15mg tablets",
        "One tablet once a day with food",
        route::ORAL,
        AC,
    ),
    med(
        "29903411000001101",
        "Edoxaban 60mg tablets",
        "One tablet once a day",
        route::ORAL,
        AC,
    ),
    med(
        "19469811000001101",
        "Dabigatran etexilate 150mg capsules",
        "One capsule twice a day",
        route::ORAL,
        AC,
    ),
    med(
        "13532811000001109",
        "Dabigatran etexilate 110mg capsules",
        "One capsule twice a day",
        route::ORAL,
        AC,
    ),
    med_prev(
        "42217511000001103",
        &["319733000"],
        "Warfarin 1mg tablets",
        WARFARIN_DOSE,
        route::ORAL,
        AC,
    ),
    med_prev(
        "42217611000001104",
        &["319734006"],
        "Warfarin 3mg tablets",
        WARFARIN_DOSE,
        route::ORAL,
        AC,
    ),
    med_prev(
        "42217911000001105",
        &["319735007"],
        "Warfarin 5mg tablets",
        WARFARIN_DOSE,
        route::ORAL,
        AC,
    ),
    // antiplatelets
    med(
        "319799004",
        "Clopidogrel 75mg tablets",
        "One tablet once a day",
        route::ORAL,
        AP,
    ),
    med(
        "319773006",
        "Aspirin 75mg dispersible tablets",
        "One tablet once a day",
        route::ORAL,
        AP,
    ),
    med(
        "319781007",
        "Aspirin 75mg gastro-resistant tablets",
        "One tablet once a day",
        route::ORAL,
        AP,
    ),
    med_prev(
        "704465002",
        &["18290211000001107"],
        "Ticagrelor 90mg tablets",
        "One tablet twice a day",
        route::ORAL,
        AP,
    ),
    med_prev(
        "443469008",
        &["15240111000001104", "21278911000001100"],
        "Prasugrel 10mg tablets",
        "One tablet once a day",
        route::ORAL,
        AP,
    ),
    // insulins (AMPs: insulin is prescribed by brand)
    med(
        "11933011000001106",
        "Lantus 100units/ml solution for injection 3ml pre-filled SoloStar pens",
        "Inject 20 units at night",
        route::SUBCUTANEOUS,
        INS,
    ),
    med(
        "3282211000001106",
        "NovoRapid FlexPen 100units/ml solution for injection 3ml pre-filled pens",
        "Inject 6 to 10 units with meals, adjust to carbohydrate",
        route::SUBCUTANEOUS,
        INS,
    ),
    med(
        "13877811000001105",
        "Humalog KwikPen 100units/ml solution for injection 3ml pre-filled pens",
        "Inject as directed with meals",
        route::SUBCUTANEOUS,
        INS,
    ),
    med(
        "17608511000001103",
        "Humulin I KwikPen 100units/ml suspension for injection 3ml pre-filled pens",
        "Inject 16 units twice a day",
        route::SUBCUTANEOUS,
        INS,
    ),
    med(
        "7589411000001100",
        "Levemir FlexPen 100units/ml solution for injection 3ml pre-filled pens",
        "Inject 14 units twice a day",
        route::SUBCUTANEOUS,
        INS,
    ),
    med(
        "3277211000001104",
        "NovoMix 30 FlexPen 100units/ml suspension for injection 3ml pre-filled pens",
        "Inject 20 units with breakfast and 16 units with evening meal",
        route::SUBCUTANEOUS,
        INS,
    ),
    // opioids
    med(
        "36128311000001101",
        "Morphine sulfate 10mg/5ml oral solution",
        "2.5ml to 5ml every 2 to 4 hours when required for pain",
        route::ORAL,
        OP,
    ),
    med(
        "36126511000001106",
        "Morphine 10mg modified-release tablets",
        "One tablet twice a day",
        route::ORAL,
        OP,
    ),
    med(
        "3077711000001104",
        "MST Continus 10mg tablets",
        "One tablet twice a day",
        route::ORAL,
        OP,
    ),
    med_prev(
        "36120011000001101",
        &["333919005"],
        "Fentanyl 25micrograms/hour transdermal patches",
        "Apply one patch every 72 hours",
        route::TRANSDERMAL,
        OP,
    ),
    med(
        "9567411000001100",
        "Buprenorphine 10micrograms/hour transdermal patches",
        "Apply one patch every 7 days",
        route::TRANSDERMAL,
        OP,
    ),
    med(
        "42010411000001105",
        "Codeine 30mg tablets",
        "One or two tablets up to four times a day when required",
        route::ORAL,
        OP,
    ),
    med(
        "42009811000001101",
        "Co-codamol 30mg/500mg tablets",
        "Two tablets up to four times a day when required",
        route::ORAL,
        OP,
    ),
    med(
        "23657811000001102",
        "Shortec 5mg capsules",
        "One capsule every 4 to 6 hours when required",
        route::ORAL,
        OP,
    ),
    med(
        "14985811000001101",
        "Oxycodone 10mg / Naloxone 5mg modified-release tablets",
        "One tablet twice a day",
        route::ORAL,
        OP,
    ),
    // systemic steroids
    med(
        "325427002",
        "Prednisolone 5mg tablets",
        "One tablet once a day in the morning",
        route::ORAL,
        Some(H::Steroid),
    ),
    med(
        "325443009",
        "Prednisolone 5mg gastro-resistant tablets",
        "Two tablets once a day in the morning",
        route::ORAL,
        Some(H::Steroid),
    ),
    // narrow therapeutic index / specialist
    med(
        "326874007",
        "Methotrexate 2.5mg tablets",
        "Four tablets ONCE a WEEK on the same day",
        route::ORAL,
        Some(H::Methotrexate),
    ),
    med(
        "13177001000001108",
        "Lithium carbonate 400mg modified-release tablets",
        "Two tablets at night",
        route::ORAL,
        Some(H::Lithium),
    ),
    med(
        "766311000001100",
        "Priadel 400mg modified-release tablets",
        "Two tablets at night",
        route::ORAL,
        Some(H::Lithium),
    ),
    med(
        "11475211000001102",
        "Sodium valproate 300mg modified-release capsules",
        "Two capsules twice a day",
        route::ORAL,
        Some(H::Antiepileptic),
    ),
    med(
        "10225811000001107",
        "Lamotrigine 50mg dispersible tablets sugar free",
        "Two tablets twice a day",
        route::ORAL,
        Some(H::Antiepileptic),
    ),
    // common, not high-risk
    med(
        "322236009",
        "Paracetamol 500mg tablets",
        "Two tablets up to four times a day when required",
        route::ORAL,
        None,
    ),
    med(
        "323509004",
        "Amoxicillin 250mg capsules",
        "One capsule three times a day for 5 days",
        route::ORAL,
        None,
    ),
    med(
        "319283006",
        "Amlodipine 5mg tablets",
        "One tablet once a day",
        route::ORAL,
        None,
    ),
    med(
        "325278007",
        "Metformin 500mg tablets",
        "One tablet twice a day with meals",
        route::ORAL,
        None,
    ),
    med(
        "39113611000001102",
        "Salbutamol 100micrograms/dose inhaler CFC free",
        "Two puffs when required",
        route::INHALATION,
        None,
    ),
    med(
        "317972000",
        "Furosemide 40mg tablets",
        "One tablet in the morning",
        route::ORAL,
        None,
    ),
    med_prev(
        "39695411000001103",
        &["320029006"],
        "Atorvastatin 10mg tablets",
        "One tablet at night",
        route::ORAL,
        None,
    ),
    med(
        "320000009",
        "Simvastatin 40mg tablets",
        "One tablet at night",
        route::ORAL,
        None,
    ),
    med(
        "374296008",
        "Levothyroxine sodium 100microgram tablets",
        "One tablet in the morning before breakfast",
        route::ORAL,
        None,
    ),
    med(
        "408063002",
        "Beclometasone 100micrograms/dose inhaler CFC free",
        "Two puffs twice a day",
        route::INHALATION,
        None,
    ),
    med(
        "42297211000001100",
        "Rosuvastatin 10mg tablets",
        "One tablet once a day",
        route::ORAL,
        None,
    ),
    med(
        "42354611000001108",
        "Lansoprazole 30mg gastro-resistant capsules",
        "One capsule once a day",
        route::ORAL,
        None,
    ),
    med(
        "42354511000001109",
        "Lansoprazole 15mg gastro-resistant capsules",
        "One capsule once a day",
        route::ORAL,
        None,
    ),
    med(
        "42353711000001101",
        "Esomeprazole 20mg gastro-resistant tablets",
        "One tablet once a day",
        route::ORAL,
        None,
    ),
];

/// Look a medicine up by its current or previous dm+d id.
pub fn medicine(code: &str) -> Option<&'static Medicine> {
    let code = code.trim();
    MEDICINES
        .iter()
        .find(|m| m.code == code || m.previous.contains(&code))
}

/// A medicine as sources often send it: free text with no code (narrative-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarrativeMedicine {
    pub text: &'static str,
    /// What [`high_risk_by_text`] must find in it (checked by the unit tests).
    pub high_risk: Option<HighRiskClass>,
}

const fn narr(text: &'static str, high_risk: Option<HighRiskClass>) -> NarrativeMedicine {
    NarrativeMedicine { text, high_risk }
}

pub static NARRATIVE_MEDICINES: &[NarrativeMedicine] = &[
    narr("Warfarin - dose as per INR clinic", AC),
    narr("Enoxaparin 40mg SC once daily (post-op, 28 days)", AC),
    narr("Insulin as per diabetes team - pump user", INS),
    narr("Oramorph 2.5-5ml PRN for breakthrough pain", OP),
    narr(
        "Levetiracetam 500mg tablets - one twice daily",
        Some(H::Antiepileptic),
    ),
    narr(
        "Buccal midazolam 10mg for seizures lasting over 5 minutes (Buccolam)",
        Some(H::Antiepileptic),
    ),
    narr(
        "Tacrolimus (Adoport) 2mg twice daily - renal transplant",
        Some(H::Immunosuppressant),
    ),
    narr("Azathioprine 50mg once daily", Some(H::Immunosuppressant)),
    narr("Digoxin 125 micrograms once daily", Some(H::Digoxin)),
    narr(
        "Hydrocortisone 10mg morning, 5mg midday - Addison's, carries steroid emergency card",
        Some(H::Steroid),
    ),
    narr(
        "Capecitabine - currently on chemotherapy cycle (oncology)",
        Some(H::Chemotherapy),
    ),
    narr(
        "Clozapine 300mg at night (clozapine clinic)",
        Some(H::Other),
    ),
    narr(
        "Methotrexate 15mg WEEKLY on Wednesdays",
        Some(H::Methotrexate),
    ),
    narr("Lithium - dose per mental health team", Some(H::Lithium)),
    narr("EpiPen 300 micrograms auto-injector, carries two", None),
    narr(
        "GTN spray 400 micrograms when required for chest pain",
        None,
    ),
    narr("Ramipril 5mg once daily", None),
    narr("Bisoprolol 2.5mg once daily", None),
    narr("Levothyroxine 100 micrograms once daily", None),
    narr("Sertraline 50mg once daily", None),
    narr("Donepezil 10mg at night", None),
    narr("Hydrocortisone 1% cream twice daily to eczema", None),
    narr("Tiotropium inhaler once daily", None),
    narr(
        "Medication list on paper at home - see care home MAR chart",
        None,
    ),
];

// ---------------------------------------------------------------------------------------------
// Allergies
// ---------------------------------------------------------------------------------------------

/// FHIR `AllergyIntolerance.category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllergenCategory {
    Food,
    Medication,
    Environment,
}

impl AllergenCategory {
    /// The FHIR code.
    pub fn fhir_code(self) -> &'static str {
        match self {
            AllergenCategory::Food => "food",
            AllergenCategory::Medication => "medication",
            AllergenCategory::Environment => "environment",
        }
    }
}

/// A common allergen: an allergy finding or a substance, as UK records code them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allergen {
    pub code: &'static str,
    pub display: &'static str,
    pub category: AllergenCategory,
    /// Rough relative frequency among recorded allergies in UK primary care (for synthetic
    /// data and ordering only; not clinical).
    pub weight: u16,
    /// Whether anaphylaxis is a typical severe reaction (nuts, venom, penicillin, latex…).
    pub anaphylactic: bool,
}

const fn allergen(
    code: &'static str,
    display: &'static str,
    category: AllergenCategory,
    weight: u16,
    anaphylactic: bool,
) -> Allergen {
    Allergen {
        code,
        display,
        category,
        weight,
        anaphylactic,
    }
}

use AllergenCategory::{Environment as ENV, Food as FOOD, Medication as MED};

pub static ALLERGENS: &[Allergen] = &[
    // medication: findings and substances (both are valid AllergyIntolerance.code values)
    allergen("91936005", "Allergy to penicillin", MED, 300, true),
    allergen("372687004", "Amoxicillin", MED, 60, true),
    allergen("387406002", "Sulfonamide", MED, 40, false),
    allergen("387458008", "Aspirin", MED, 40, true),
    allergen("387207008", "Ibuprofen", MED, 45, false),
    allergen("387494007", "Codeine", MED, 40, false),
    allergen("373529000", "Morphine", MED, 20, false),
    // food
    allergen("91935009", "Allergy to peanuts", FOOD, 70, true),
    allergen("91934008", "Allergy to nut", FOOD, 40, true),
    allergen("300913006", "Shellfish allergy", FOOD, 35, true),
    allergen("417532002", "Allergy to fish", FOOD, 15, true),
    allergen("91930004", "Allergy to eggs", FOOD, 25, false),
    allergen("425525006", "Allergy to dairy product", FOOD, 25, false),
    allergen("420174000", "Allergy to wheat", FOOD, 10, false),
    allergen("714035009", "Allergy to soya", FOOD, 8, false),
    // environment
    allergen("300916003", "Latex allergy", ENV, 30, true),
    allergen("424213003", "Allergy to bee venom", ENV, 15, true),
    allergen("232350006", "House dust mite allergy", ENV, 45, false),
    allergen("418689008", "Allergy to grass pollen", ENV, 60, false),
    allergen("419263009", "Allergy to tree pollen", ENV, 20, false),
    allergen("232347008", "Dander (animal) allergy", ENV, 25, false),
    allergen("419474003", "Allergy to mould", ENV, 12, false),
];

/// Look an allergen up by code.
pub fn allergen_by_code(code: &str) -> Option<&'static Allergen> {
    ALLERGENS.iter().find(|a| a.code == code.trim())
}

/// A reaction (allergy manifestation), SNOMED CT clinical finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaction {
    pub code: &'static str,
    pub display: &'static str,
    /// Life-threatening when present (drives `criticality: high`, `severity: severe`).
    pub severe: bool,
}

const fn reaction(code: &'static str, display: &'static str, severe: bool) -> Reaction {
    Reaction {
        code,
        display,
        severe,
    }
}

pub static REACTIONS: &[Reaction] = &[
    reaction("39579001", "Anaphylaxis", true),
    reaction("41291007", "Angioedema", true),
    reaction("247472004", "Urticarial rash", false),
    reaction("126485001", "Urticaria", false),
    reaction("271807003", "Skin rash", false),
    reaction("418290006", "Itching", false),
    reaction("267036007", "Dyspnoea", false),
    reaction("56018004", "Wheezing", false),
    reaction("422587007", "Nausea", false),
    reaction("422400008", "Vomiting", false),
    reaction("62315008", "Diarrhoea", false),
    reaction("21522001", "Abdominal pain", false),
    reaction("70076002", "Rhinitis", false),
    reaction("9826008", "Conjunctivitis", false),
];

/// Look a reaction up by code.
pub fn reaction_by_code(code: &str) -> Option<&'static Reaction> {
    REACTIONS.iter().find(|r| r.code == code.trim())
}

// ---------------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------------

/// A long-term condition (SNOMED CT disorder or finding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub code: &'static str,
    pub display: &'static str,
    /// UK Core problem significance `major` (changes emergency management) vs `minor`.
    pub major: bool,
}

const fn condition(code: &'static str, display: &'static str, major: bool) -> Condition {
    Condition {
        code,
        display,
        major,
    }
}

pub static CONDITIONS: &[Condition] = &[
    condition("38341003", "Hypertensive disorder", false),
    condition("44054006", "Diabetes mellitus type 2", true),
    condition("46635009", "Diabetes mellitus type 1", true),
    condition("195967001", "Asthma", true),
    condition("13645005", "Chronic obstructive lung disease", true),
    condition("49436004", "Atrial fibrillation", true),
    condition("84114007", "Heart failure", true),
    condition("414545008", "Ischaemic heart disease", true),
    condition("22298006", "Myocardial infarction", true),
    condition("230690007", "Cerebrovascular accident", true),
    condition("266257000", "Transient ischaemic attack", false),
    condition("84757009", "Epilepsy", true),
    condition("52448006", "Dementia", true),
    condition("709044004", "Chronic kidney disease", true),
    condition("363346000", "Malignant neoplastic disease", true),
    condition("254837009", "Malignant tumour of breast", true),
    condition("399068003", "Malignant tumour of prostate", true),
    condition("35489007", "Depressive disorder", false),
    condition("197480006", "Anxiety disorder", false),
    condition("58214004", "Schizophrenia", true),
    condition("13746004", "Bipolar disorder", true),
    condition("40930008", "Hypothyroidism", false),
    condition("69896004", "Rheumatoid arthritis", false),
    condition("396275006", "Osteoarthritis", false),
    condition("127040003", "Sickle cell-haemoglobin SS disease", true),
    condition("86406008", "Human immunodeficiency virus infection", true),
    condition("49049000", "Parkinson's disease", true),
    condition("24700007", "Multiple sclerosis", true),
    condition("128053003", "Deep venous thrombosis", false),
    condition("59282003", "Pulmonary embolism", true),
    condition("248279007", "Frailty", false),
    condition("363732003", "Addison's disease", true),
    condition("110359009", "Intellectual disability", true),
    condition("408856003", "Autism spectrum disorder", false),
    condition("190905008", "Cystic fibrosis", true),
    condition("41040004", "Complete trisomy 21 syndrome", false),
    condition("82423001", "Chronic pain", false),
    condition("15188001", "Hearing loss", false),
    condition("7200002", "Alcoholism", false),
];

/// Look a condition up by code.
pub fn condition_by_code(code: &str) -> Option<&'static Condition> {
    CONDITIONS.iter().find(|c| c.code == code.trim())
}

// ---------------------------------------------------------------------------------------------
// Resuscitation decisions, care plans, alerts
// ---------------------------------------------------------------------------------------------

/// A resuscitation decision (FHIR `Consent.provision.code`, scope `adr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResuscitationCode {
    pub code: &'static str,
    pub display: &'static str,
    /// Whether CPR should be attempted.
    pub attempt_cpr: bool,
}

/// 450476008 (UK DNACPR), 304253006, 304252001.
pub static RESUSCITATION_CODES: &[ResuscitationCode] = &[
    ResuscitationCode {
        code: "450476008",
        display: "Not for attempted cardiopulmonary resuscitation",
        attempt_cpr: false,
    },
    ResuscitationCode {
        code: "304253006",
        display: "Not for resuscitation",
        attempt_cpr: false,
    },
    ResuscitationCode {
        code: "304252001",
        display: "For resuscitation",
        attempt_cpr: true,
    },
];

/// Look a resuscitation decision up by code.
pub fn resuscitation_by_code(code: &str) -> Option<&'static ResuscitationCode> {
    RESUSCITATION_CODES.iter().find(|r| r.code == code.trim())
}

/// The NRL category of every care-plan pointer.
pub const CARE_PLAN_CATEGORY: Coded = Coded {
    code: "734163000",
    display: "Care plan",
};

/// The NRL record type of a ReSPECT form (also in [`CARE_PLAN_TYPES`]): a care plan *and* a
/// resuscitation decision (`respect_plan`, with the form's own CPR recommendation when stated).
pub const RESPECT_TYPE: &str = "1382601000000107";

/// National Record Locator record types for care plans (`DocumentReference.type`).
pub static CARE_PLAN_TYPES: &[Coded] = &[
    Coded {
        code: "1382601000000107",
        display: "ReSPECT (Recommended Summary Plan for Emergency Care and Treatment) form",
    },
    Coded {
        code: "736373009",
        display: "End of life care plan",
    },
    Coded {
        code: "861421000000109",
        display: "End of life care coordination summary",
    },
    Coded {
        code: "736253002",
        display: "Mental health crisis plan",
    },
    Coded {
        code: "887701000000100",
        display: "Emergency health care plan",
    },
    Coded {
        code: "736366004",
        display: "Advance care plan",
    },
    Coded {
        code: "735324008",
        display: "Treatment escalation plan",
    },
    Coded {
        code: "325691000000100",
        display: "Contingency plan",
    },
];

/// Look a care-plan type up by code.
pub fn care_plan_type(code: &str) -> Option<&'static Coded> {
    CARE_PLAN_TYPES.iter().find(|c| c.code == code.trim())
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Communication needs and reasonable adjustments.
    CommunicationNeeds,
    Safeguarding,
    /// A risk to the attending crew (violence, animals, oxygen…).
    RiskToCrew,
    /// A clinical alert that changes emergency management.
    Clinical,
}

impl AlertKind {
    /// The FHIR `Flag.category` code (`http://terminology.hl7.org/CodeSystem/flag-category`).
    pub fn flag_category(self) -> &'static str {
        match self {
            AlertKind::CommunicationNeeds => "contact",
            AlertKind::Safeguarding => "safety",
            AlertKind::RiskToCrew => "behavioral",
            AlertKind::Clinical => "clinical",
        }
    }
}

/// An alert as free text (`Flag.code.text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertFlag {
    pub text: &'static str,
    pub kind: AlertKind,
}

const fn alert(text: &'static str, kind: AlertKind) -> AlertFlag {
    AlertFlag { text, kind }
}

pub static ALERT_FLAGS: &[AlertFlag] = &[
    alert(
        "Deaf - British Sign Language interpreter required",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Requires interpreter: Bengali (Sylheti)",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Requires interpreter: Polish",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Requires interpreter: Turkish",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Requires interpreter: Somali",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Learning disability - hospital passport held by carer; use simple language",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Autism - quiet environment, explain before touching",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Registered blind - guide dog",
        AlertKind::CommunicationNeeds,
    ),
    alert(
        "Child subject to a child protection plan - inform children's social care",
        AlertKind::Safeguarding,
    ),
    alert(
        "Adult safeguarding - domestic abuse, MARAC referral",
        AlertKind::Safeguarding,
    ),
    alert(
        "Vulnerable adult - lives alone, self-neglect concerns",
        AlertKind::Safeguarding,
    ),
    alert("Do not disclose address - refuge", AlertKind::Safeguarding),
    alert(
        "History of violence towards staff - request police attendance",
        AlertKind::RiskToCrew,
    ),
    alert("Dangerous dog at address", AlertKind::RiskToCrew),
    alert(
        "Home oxygen in use - fire risk, smoker",
        AlertKind::RiskToCrew,
    ),
    alert(
        "Bariatric - specialist equipment and additional crew required",
        AlertKind::RiskToCrew,
    ),
    alert(
        "Steroid dependent - give emergency hydrocortisone if unwell",
        AlertKind::Clinical,
    ),
    alert(
        "Sickle cell disease - follow individual pain plan",
        AlertKind::Clinical,
    ),
    alert("Difficult airway - anaesthetic alert", AlertKind::Clinical),
    alert(
        "Implantable cardioverter-defibrillator in situ",
        AlertKind::Clinical,
    ),
    alert("Neck breather - laryngectomy", AlertKind::Clinical),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_known_markers_map_to_their_sections() {
        let cases = [
            ("716186003", NoKnown::Allergy, SectionKind::Allergies),
            ("409137002", NoKnown::DrugAllergy, SectionKind::Allergies),
            ("429625007", NoKnown::FoodAllergy, SectionKind::Allergies),
            (
                "428607008",
                NoKnown::EnvironmentalAllergy,
                SectionKind::Allergies,
            ),
            ("787481004", NoKnown::Medications, SectionKind::Medications),
            ("160245001", NoKnown::Problems, SectionKind::Conditions),
        ];
        for (code, marker, section) in cases {
            assert_eq!(no_known_marker(code), Some(marker), "{code}");
            assert_eq!(no_known_section(code), Some(section), "{code}");
            assert_eq!(marker.code(), code);
        }
        assert!(NoKnown::DrugAllergy.is_partial() && !NoKnown::Allergy.is_partial());
    }

    #[test]
    fn ordinary_codes_are_not_no_known_markers() {
        for code in [
            "91936005",
            "39579001",
            "",
            "716186",
            "7161860030",
            "304253006",
        ] {
            assert_eq!(no_known_marker(code), None, "{code}");
        }
        // tolerant of stray whitespace, as FHIR strings sometimes carry
        assert_eq!(
            no_known_section(" 716186003 "),
            Some(SectionKind::Allergies)
        );
    }

    #[test]
    fn high_risk_by_code_covers_current_and_previous_dmd_ids() {
        let cases = [
            ("42206511000001102", HighRiskClass::Anticoagulant), // apixaban 5mg, current VMP
            ("703908001", HighRiskClass::Anticoagulant),         // apixaban 5mg, previous VMP
            ("319733000", HighRiskClass::Anticoagulant),         // warfarin 1mg, previous VMP
            ("48603004", HighRiskClass::Anticoagulant),          // warfarin VTM
            ("11933011000001106", HighRiskClass::Insulin),       // Lantus SoloStar
            ("23657811000001102", HighRiskClass::Opioid),        // Shortec: brand, no keyword
            ("326874007", HighRiskClass::Methotrexate),
            ("13177001000001108", HighRiskClass::Lithium),
            ("325427002", HighRiskClass::Steroid),
            ("319799004", HighRiskClass::Antiplatelet),
        ];
        for (code, class) in cases {
            assert_eq!(high_risk_class(Some(code), ""), Some(class), "{code}");
        }
        assert_eq!(
            high_risk_class(Some("322236009"), "Paracetamol 500mg tablets"),
            None
        );
    }

    #[test]
    fn text_still_counts_when_the_code_is_not_high_risk() {
        // A code and text that disagree err on the side of flagging: a crew would rather see
        // a spurious "anticoagulant" than miss one.
        assert_eq!(
            high_risk_class(Some("322236009"), "Paracetamol 500mg; also on warfarin"),
            Some(HighRiskClass::Anticoagulant)
        );
        // An unknown code falls back to the words.
        assert_eq!(
            high_risk_class(Some("999999999"), "Warfarin 1mg"),
            Some(HighRiskClass::Anticoagulant)
        );
        // A high-risk code is not overridden by bland text.
        assert_eq!(
            high_risk_class(Some("326874007"), "tablets"),
            Some(HighRiskClass::Methotrexate)
        );
    }

    #[test]
    fn high_risk_by_keyword_is_case_insensitive() {
        let cases = [
            ("WARFARIN 3mg", HighRiskClass::Anticoagulant),
            ("Eliquis 5mg tablets", HighRiskClass::Anticoagulant),
            ("rivaroxaban", HighRiskClass::Anticoagulant),
            ("Edoxaban 30mg", HighRiskClass::Anticoagulant),
            (
                "Dabigatran etexilate 110mg capsules",
                HighRiskClass::Anticoagulant,
            ),
            ("Insulin glargine", HighRiskClass::Insulin),
            ("NovoRapid FlexPen", HighRiskClass::Insulin),
            ("Morphine sulfate 10mg/5ml", HighRiskClass::Opioid),
            ("OxyContin 10mg", HighRiskClass::Opioid),
            ("Fentanyl patch", HighRiskClass::Opioid),
            ("Dihydrocodeine 30mg", HighRiskClass::Opioid),
            ("Prednisolone 5mg", HighRiskClass::Steroid),
            ("Methotrexate 2.5mg tablets", HighRiskClass::Methotrexate),
            ("Lithium carbonate", HighRiskClass::Lithium),
            ("Priadel 400mg", HighRiskClass::Lithium),
            ("Tacrolimus 1mg capsules", HighRiskClass::Immunosuppressant),
            ("Sodium valproate", HighRiskClass::Antiepileptic),
            ("Keppra 500mg", HighRiskClass::Antiepileptic),
            ("Digoxin 62.5 micrograms", HighRiskClass::Digoxin),
            ("Capecitabine 500mg", HighRiskClass::Chemotherapy),
            ("Clopidogrel 75mg", HighRiskClass::Antiplatelet),
            ("Clozapine 100mg", HighRiskClass::Other),
        ];
        for (text, class) in cases {
            assert_eq!(high_risk_class(None, text), Some(class), "{text}");
        }
    }

    #[test]
    fn topical_steroids_and_plain_medicines_are_not_high_risk() {
        for text in [
            "Hydrocortisone 1% cream",
            "Beclometasone inhaler",
            "Prednisolone eye drops",
            "Tacrolimus 0.1% ointment",
            "Paracetamol 500mg",
            "Amlodipine 5mg",
            "",
            "Midazolam 10mg/2ml injection",
        ] {
            assert_eq!(high_risk_class(None, text), None, "{text}");
        }
        assert_eq!(
            high_risk_class(None, "Buccal midazolam 10mg"),
            Some(HighRiskClass::Antiepileptic)
        );
    }

    #[test]
    fn table_classes_agree_with_their_own_text() {
        // Every coded high-risk medicine would also be caught by its name if sent uncoded,
        // except brands whose name carries no generic (kept on the code list for that reason).
        for m in MEDICINES {
            if m.code == "23657811000001102" {
                continue; // Shortec (oxycodone): caught by its brand keyword instead
            }
            assert_eq!(high_risk_by_text(m.display), m.high_risk, "{}", m.display);
        }
        for n in NARRATIVE_MEDICINES {
            assert_eq!(high_risk_by_text(n.text), n.high_risk, "{}", n.text);
        }
    }

    #[test]
    fn code_lists_are_well_formed_and_distinct() {
        let mut seen = HashSet::new();
        let all_codes = MEDICINES
            .iter()
            .flat_map(|m| std::iter::once(m.code).chain(m.previous.iter().copied()))
            .chain(ALLERGENS.iter().map(|a| a.code))
            .chain(REACTIONS.iter().map(|r| r.code))
            .chain(CONDITIONS.iter().map(|c| c.code))
            .chain(RESUSCITATION_CODES.iter().map(|r| r.code))
            .chain(CARE_PLAN_TYPES.iter().map(|c| c.code))
            .chain(NoKnown::ALL.iter().map(|n| n.code()))
            .chain(HIGH_RISK_VTMS.iter().map(|v| v.code));
        for code in all_codes {
            assert!(
                (6..=18).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()),
                "not a SNOMED CT id: {code}"
            );
            assert!(
                !code.starts_with('0'),
                "SNOMED CT ids never start with 0: {code}"
            );
            assert!(seen.insert(code), "code listed twice: {code}");
        }
        assert!(ALLERGENS.len() >= 20 && MEDICINES.len() >= 40 && CONDITIONS.len() >= 30);
        assert!(ALLERGENS.iter().all(|a| a.weight > 0));
    }

    #[test]
    fn snomed_ids_carry_a_valid_verhoeff_check_digit() {
        // SNOMED CT identifiers end in a Verhoeff check digit: a typo in a table fails here.
        const D: [[u8; 10]; 10] = [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
            [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
            [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
            [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
            [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
            [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
            [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
            [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
            [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        ];
        const P: [[u8; 10]; 8] = [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
            [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
            [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
            [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
            [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
            [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
            [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
        ];
        fn verhoeff_ok(code: &str) -> bool {
            let mut c = 0u8;
            for (i, b) in code.bytes().rev().enumerate() {
                c = D[c as usize][P[i % 8][(b - b'0') as usize] as usize];
            }
            c == 0
        }
        let all = MEDICINES
            .iter()
            .flat_map(|m| std::iter::once(m.code).chain(m.previous.iter().copied()))
            .chain(ALLERGENS.iter().map(|a| a.code))
            .chain(REACTIONS.iter().map(|r| r.code))
            .chain(CONDITIONS.iter().map(|c| c.code))
            .chain(RESUSCITATION_CODES.iter().map(|r| r.code))
            .chain(CARE_PLAN_TYPES.iter().map(|c| c.code))
            .chain(std::iter::once(CARE_PLAN_CATEGORY.code))
            .chain(NoKnown::ALL.iter().map(|n| n.code()))
            .chain(HIGH_RISK_VTMS.iter().map(|v| v.code))
            .chain(
                [
                    route::ORAL,
                    route::SUBCUTANEOUS,
                    route::TRANSDERMAL,
                    route::INHALATION,
                    route::INTRAMUSCULAR,
                    route::SUBLINGUAL,
                ]
                .iter()
                .map(|r| r.code),
            );
        let bad: Vec<&str> = all.filter(|c| !verhoeff_ok(c)).collect();
        assert!(
            bad.is_empty(),
            "codes failing the SNOMED CT Verhoeff check: {bad:?}"
        );
    }

    #[test]
    fn lookups_find_table_entries() {
        assert_eq!(
            medicine("703908001").map(|m| m.display),
            Some("Apixaban 5mg tablets")
        );
        assert_eq!(
            allergen_by_code("91936005").map(|a| a.category),
            Some(AllergenCategory::Medication)
        );
        assert!(reaction_by_code("39579001").is_some_and(|r| r.severe));
        assert!(condition_by_code("49436004").is_some_and(|c| c.major));
        assert!(resuscitation_by_code("450476008").is_some_and(|r| !r.attempt_cpr));
        assert!(care_plan_type("1382601000000107").is_some());
        assert_eq!(AlertKind::Safeguarding.flag_category(), "safety");
    }

    #[test]
    fn high_risk_class_serialises_snake_case() {
        let json = serde_json::to_string(&HighRiskClass::Anticoagulant).unwrap_or_default();
        assert_eq!(json, "\"anticoagulant\"");
        for c in HighRiskClass::ALL {
            assert!(!c.label().is_empty());
        }
    }
}
