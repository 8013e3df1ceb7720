//! Reference data: London postcode districts, GP practices and trusts, street and name pools,
//! and the clinical tables (prevalence by age band, prescribing rules, narrative allergies)
//! behind the distributions in the crate docs, resolved once against `edge_proto::codes`.

use std::sync::OnceLock;

use edge_proto::codes::{
    self, Allergen, AllergenCategory, HighRiskClass, Medicine, NarrativeMedicine, Reaction,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Region {
    Central,
    East,
    North,
    NorthWest,
    West,
    SouthWest,
    South,
    SouthEast,
}

use Region::{
    Central as RC, East as RE, North as RN, NorthWest as RNW, South as RS, SouthEast as RSE,
    SouthWest as RSW, West as RW,
};

/// Real London postcode districts.
#[rustfmt::skip]
pub(crate) const DISTRICTS: &[(&str, Region)] = &[
    ("EC1", RC), ("WC1", RC), ("W1", RC), ("SW1", RC), ("N1", RC), ("NW1", RC),
    ("E1", RE), ("E2", RE), ("E3", RE), ("E5", RE), ("E8", RE), ("E9", RE), ("E10", RE),
    ("E11", RE), ("E13", RE), ("E14", RE), ("E15", RE), ("E17", RE), ("IG1", RE), ("RM10", RE),
    ("N4", RN), ("N7", RN), ("N8", RN), ("N15", RN), ("N16", RN), ("N17", RN), ("N19", RN),
    ("N22", RN), ("EN1", RN),
    ("NW2", RNW), ("NW5", RNW), ("NW6", RNW), ("NW10", RNW), ("HA0", RNW), ("HA8", RNW),
    ("W2", RW), ("W3", RW), ("W6", RW), ("W10", RW), ("W12", RW), ("UB1", RW), ("TW3", RW),
    ("SW2", RSW), ("SW4", RSW), ("SW6", RSW), ("SW9", RSW), ("SW11", RSW), ("SW16", RSW),
    ("SW17", RSW), ("SW19", RSW), ("KT1", RSW), ("SM1", RSW), ("CR4", RSW),
    ("CR0", RS), ("CR7", RS), ("SE25", RS),
    ("SE1", RSE), ("SE5", RSE), ("SE6", RSE), ("SE8", RSE), ("SE10", RSE), ("SE13", RSE),
    ("SE15", RSE), ("SE17", RSE), ("SE18", RSE), ("SE22", RSE), ("SE28", RSE), ("BR1", RSE),
    ("DA15", RSE),
];

const SYS_EMIS: &str = "urn:kerbside:system:emis-web";
const SYS_TPP: &str = "urn:kerbside:system:systmone";
const SYS_CERNER: &str = "urn:kerbside:system:cerner-millennium";
const SYS_EPIC: &str = "urn:kerbside:system:epic";
const SYS_RIO: &str = "urn:kerbside:system:rio";
const SYS_UCP: &str = "urn:kerbside:system:ucp";

/// A source organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Org {
    pub(crate) ods: &'static str,
    pub(crate) name: &'static str,
    pub(crate) system: &'static str,
}

/// A GP practice with the districts its list is drawn from. Names are invented; codes follow
/// the ODS pattern (and the contract's `practice:F84001` example).
pub(crate) struct Practice {
    pub(crate) org: Org,
    pub(crate) districts: &'static [&'static str],
}

const fn gp(
    ods: &'static str,
    name: &'static str,
    emis: bool,
    districts: &'static [&'static str],
) -> Practice {
    let system = if emis { SYS_EMIS } else { SYS_TPP };
    Practice {
        org: Org { ods, name, system },
        districts,
    }
}

#[rustfmt::skip]
pub(crate) const PRACTICES: &[Practice] = &[
    gp("F84001", "Stepney Green Medical Practice", true, &["E1", "E14", "E3"]),
    gp("F84002", "Bow Road Surgery", true, &["E3", "E2"]),
    gp("F84003", "Dalston Lane Health Centre", true, &["E8", "E5", "N16"]),
    gp("F84004", "Hackney Wick Medical Centre", false, &["E9", "E15"]),
    gp("F84005", "Leyton Green Surgery", true, &["E10", "E11", "E17"]),
    gp("F84006", "Stratford Village Practice", true, &["E15", "E13"]),
    gp("F84007", "Canary Wharf Riverside Practice", false, &["E14"]),
    gp("F82001", "Ilford Lane Surgery", true, &["IG1", "RM10"]),
    gp("E83001", "Holloway Road Medical Centre", true, &["N7", "N19"]),
    gp("E83002", "Finsbury Park Health Centre", false, &["N4", "N8"]),
    gp("E83003", "Tottenham Hale Surgery", true, &["N15", "N17"]),
    gp("E83004", "Wood Green Medical Practice", true, &["N22", "N8"]),
    gp("E83005", "Enfield Town Surgery", false, &["EN1"]),
    gp("E84001", "Willesden Green Medical Centre", true, &["NW10", "NW2"]),
    gp("E84002", "Wembley Park Surgery", true, &["HA0", "NW10", "HA8"]),
    gp("E84003", "Kilburn High Road Practice", false, &["NW6", "NW2"]),
    gp("E84004", "Kentish Town Health Centre", true, &["NW5", "NW1"]),
    gp("E85001", "Paddington Green Health Centre", true, &["W2", "W10"]),
    gp("E85002", "Shepherd's Bush Medical Centre", false, &["W12", "W6"]),
    gp("E85003", "Acton Vale Surgery", true, &["W3", "W12"]),
    gp("E85004", "Southall Broadway Practice", true, &["UB1", "TW3"]),
    gp("E87001", "Marylebone Village Surgery", true, &["W1", "NW1"]),
    gp("E87002", "Bloomsbury Medical Practice", false, &["WC1", "EC1"]),
    gp("E87003", "Pimlico Health Centre", true, &["SW1"]),
    gp("F83001", "Angel Islington Surgery", true, &["N1", "EC1"]),
    gp("G85001", "Walworth Road Surgery", true, &["SE17", "SE1", "SE5"]),
    gp("G85002", "Camberwell Green Medical Centre", true, &["SE5", "SE15"]),
    gp("G85003", "Peckham Rye Practice", false, &["SE15", "SE22"]),
    gp("G85004", "Borough High Street Surgery", true, &["SE1"]),
    gp("G84001", "Lewisham Park Medical Centre", true, &["SE13", "SE6"]),
    gp("G84002", "Deptford Creek Surgery", false, &["SE8", "SE13"]),
    gp("G83001", "Woolwich Arsenal Surgery", true, &["SE18", "SE28"]),
    gp("G84003", "Bromley Common Practice", true, &["BR1", "DA15"]),
    gp("G85005", "Brixton Hill Group Practice", true, &["SW2", "SW9"]),
    gp("G85006", "Stockwell Park Surgery", false, &["SW9", "SW4"]),
    gp("H85001", "Clapham Junction Medical Centre", true, &["SW11", "SW4"]),
    gp("H85002", "Tooting Broadway Surgery", true, &["SW17", "SW16"]),
    gp("H85003", "Wimbledon Village Practice", false, &["SW19", "SM1", "KT1"]),
    gp("H85004", "Fulham Palace Road Surgery", true, &["SW6"]),
    gp("H83001", "Croydon Central Medical Centre", true, &["CR0", "CR7"]),
    gp("H83002", "Thornton Heath Surgery", false, &["CR7", "SE25"]),
    gp("Y02001", "Mitcham Lane Health Hub", true, &["CR4", "SW16"]),
    gp("Y03001", "Greenwich Peninsula Practice", true, &["SE10", "SE18"]),
];

const fn trust(ods: &'static str, name: &'static str, system: &'static str) -> Org {
    Org { ods, name, system }
}

/// Acute trusts with the regions they mainly serve.
pub(crate) const ACUTE: &[(Org, &[Region])] = &[
    (
        trust("RJ1", "Guy's and St Thomas' NHS Foundation Trust", SYS_EPIC),
        &[RSE, RC],
    ),
    (
        trust(
            "RJZ",
            "King's College Hospital NHS Foundation Trust",
            SYS_EPIC,
        ),
        &[RSE, RS],
    ),
    (trust("R1H", "Barts Health NHS Trust", SYS_CERNER), &[RE]),
    (
        trust("RYJ", "Imperial College Healthcare NHS Trust", SYS_CERNER),
        &[RW, RC],
    ),
    (
        trust("RAL", "Royal Free London NHS Foundation Trust", SYS_CERNER),
        &[RN, RNW],
    ),
    (
        trust(
            "RRV",
            "University College London Hospitals NHS Foundation Trust",
            SYS_EPIC,
        ),
        &[RC, RN],
    ),
    (
        trust(
            "RJ7",
            "St George's University Hospitals NHS Foundation Trust",
            SYS_CERNER,
        ),
        &[RSW],
    ),
    (
        trust(
            "RQM",
            "Chelsea and Westminster Hospital NHS Foundation Trust",
            SYS_CERNER,
        ),
        &[RW, RSW],
    ),
    (
        trust("RJ6", "Croydon Health Services NHS Trust", SYS_CERNER),
        &[RS],
    ),
    (
        trust(
            "RF4",
            "Barking, Havering and Redbridge University Hospitals NHS Trust",
            SYS_CERNER,
        ),
        &[RE],
    ),
    (
        trust(
            "R1K",
            "London North West University Healthcare NHS Trust",
            SYS_CERNER,
        ),
        &[RNW, RW],
    ),
    (
        trust(
            "RQX",
            "Homerton Healthcare NHS Foundation Trust",
            SYS_CERNER,
        ),
        &[RE],
    ),
    (
        trust("RKE", "Whittington Health NHS Trust", SYS_CERNER),
        &[RN],
    ),
    (
        trust("RJ2", "Lewisham and Greenwich NHS Trust", SYS_CERNER),
        &[RSE],
    ),
    (
        trust(
            "RAP",
            "North Middlesex University Hospital NHS Trust",
            SYS_CERNER,
        ),
        &[RN],
    ),
];

/// Mental-health trusts.
pub(crate) const MENTAL_HEALTH: &[Org] = &[
    trust(
        "RV5",
        "South London and Maudsley NHS Foundation Trust",
        SYS_RIO,
    ),
    trust(
        "RV3",
        "Central and North West London NHS Foundation Trust",
        SYS_TPP,
    ),
    trust("RWK", "East London NHS Foundation Trust", SYS_RIO),
];

/// The custodian of London's Universal Care Plans (hosted for OneLondon by South West London).
pub(crate) const UCP: Org = Org {
    ods: "QWE",
    name: "Universal Care Plan (OneLondon)",
    system: SYS_UCP,
};

#[rustfmt::skip]
pub(crate) const STREETS: &[&str] = &[
    "High Street", "Church Road", "Station Road", "Victoria Road", "Albert Road", "Manor Road",
    "Park Road", "Queen's Road", "King's Road", "Green Lanes", "Mile End Road", "Walworth Road",
    "Coldharbour Lane", "Brixton Hill", "Holloway Road", "Kilburn High Road", "Whitechapel Road",
    "Old Kent Road", "Lordship Lane", "Streatham High Road", "Uxbridge Road", "Harrow Road",
    "Seven Sisters Road", "Romford Road", "Lea Bridge Road", "Denmark Hill", "Stroud Green Road",
    "Commercial Road", "Cable Street", "Roman Road", "Balham High Road", "Tooting Bec Road",
    "Lewisham Way", "Deptford High Street", "Well Street", "Mare Street", "Caledonian Road",
    "Essex Road", "Brick Lane", "Cromwell Road",
];

#[rustfmt::skip]
pub(crate) const BLOCKS: &[&str] = &[
    "Brunel House", "Nightingale Court", "Thames View", "Windrush House", "Attlee Court",
    "Wren Point", "Seacole House", "Lansbury Tower", "Bevan Court", "Mandela House",
];

/// Postcode unit letters (no C, I, K, M, O, V).
pub(crate) const UNIT_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

/// Name pools. Older British given names for those born before 1970.
pub(crate) struct Pool {
    pub(crate) weight: u32,
    pub(crate) family: &'static [&'static str],
    pub(crate) female: &'static [&'static str],
    pub(crate) male: &'static [&'static str],
}

pub(crate) const BRITISH_FEMALE_OLD: &[&str] = &[
    "Margaret",
    "Elizabeth",
    "Patricia",
    "Susan",
    "Dorothy",
    "Jean",
    "Joan",
    "Barbara",
    "Kathleen",
    "Christine",
    "Brenda",
    "Sheila",
    "Maureen",
    "Pauline",
    "Valerie",
    "Eileen",
];
pub(crate) const BRITISH_MALE_OLD: &[&str] = &[
    "Robert", "William", "Richard", "James", "Edward", "Anthony", "Michael", "Peter", "John",
    "David", "Albert", "Kenneth", "Derek", "Brian", "Raymond", "Terence",
];

#[rustfmt::skip]
pub(crate) const POOLS: &[Pool] = &[
    Pool {
        // British / Irish
        weight: 40,
        family: &[
            "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Johnson",
            "Roberts", "Walker", "Wright", "Thompson", "White", "Hughes", "Edwards", "Green",
            "Hall", "Wood", "Harris", "O'Brien", "O'Connor", "O'Sullivan", "Murphy", "Kelly",
            "McDonald", "MacLeod", "Smith-Jones", "Ashworth-Clarke", "Taylor-Johnson",
            "Fitzgerald", "Gallagher", "Doherty", "Lloyd", "Price", "Morgan",
        ],
        female: &[
            "Olivia", "Amelia", "Isla", "Ava", "Emily", "Sophie", "Grace", "Chloë", "Zoë",
            "Siobhán", "Aoife", "Niamh", "Elizabeth", "Katherine", "Rebecca", "Victoria",
            "Jennifer", "Charlotte", "Hannah", "Lucy", "Mary-Jane", "Renée",
        ],
        male: &[
            "Oliver", "George", "Harry", "Noah", "Jack", "Leo", "Oscar", "Thomas", "William",
            "James", "Daniel", "Joseph", "Christopher", "Alexander", "Seán", "Ciarán", "Robert",
            "Michael", "Edward", "Richard", "Matthew", "Callum",
        ],
    },
    Pool {
        // South Asian
        weight: 18,
        family: &[
            "Patel", "Shah", "Khan", "Ahmed", "Begum", "Ali", "Hussain", "Rahman", "Islam",
            "Miah", "Uddin", "Singh", "Kaur", "Sharma", "Gupta", "Chowdhury", "Mistry", "Desai",
            "Iqbal", "Akhtar", "Ali-Khan", "Nair", "Fernando", "Perera", "Sivakumar",
        ],
        female: &[
            "Fatima", "Aisha", "Priya", "Anjali", "Nusrat", "Shabana", "Farzana", "Ayesha",
            "Sunita", "Harpreet", "Zainab", "Maryam", "Nadia", "Sana", "Kavya", "Tahmina",
        ],
        male: &[
            "Muhammad", "Mohammed", "Ahmed", "Ibrahim", "Yusuf", "Arjun", "Rahul", "Imran",
            "Abdul", "Sanjay", "Harjit", "Amir", "Omar", "Rohan", "Shafiq", "Rajesh",
        ],
    },
    Pool {
        // Other European (Polish, Romanian, Portuguese, Italian, Greek…)
        weight: 14,
        family: &[
            "Kowalski", "Nowak", "Wiśniewska", "Kowalczyk", "Popescu", "Ionescu", "Rossi",
            "Russo", "Ferreira", "Gonçalves", "DaCosta", "Silva", "García", "Nuñez", "Müller",
            "Schmidt", "Dvořák", "Papadopoulos", "Georgiou", "Ødegaard", "Nagy", "Kovács",
            "Dubois", "Venter", "D'Souza",
        ],
        female: &[
            "Anna", "Agnieszka", "Małgorzata", "Ioana", "Elena", "Giulia", "Ana-Maria", "Maria",
            "Sofia", "Ágnes", "Katarzyna", "Lucía", "Inês", "Élodie", "Ingrid", "Zuzana",
        ],
        male: &[
            "Piotr", "Łukasz", "Andrei", "Mihai", "Marco", "Giuseppe", "João", "José", "Miguel",
            "Tomasz", "Zoltán", "Björn", "François", "Jürgen", "Nikolaos", "Pavel",
        ],
    },
    Pool {
        // Black African
        weight: 9,
        family: &[
            "Okafor", "Adeyemi", "Adebayo", "Okonkwo", "Mensah", "Owusu", "Asante", "Boateng",
            "Mohamed", "Abdi", "Hassan", "Osei", "Nwosu", "Eze", "Mensah-Bonsu", "Owusu-Ansah",
            "Tesfaye", "Kamara",
        ],
        female: &[
            "Chiamaka", "Ngozi", "Adaeze", "Abena", "Akosua", "Ama", "Fadumo", "Hodan", "Folake",
            "Blessing", "Yetunde", "Efua", "Amina", "Chipo",
        ],
        male: &[
            "Chukwuemeka", "Oluwaseun", "Kwame", "Kofi", "Yaw", "Abdirahman", "Abdullahi",
            "Tunde", "Emeka", "Femi", "Kwabena", "Tendai", "Samuel", "Daniel",
        ],
    },
    Pool {
        // Black Caribbean
        weight: 5,
        family: &[
            "Campbell", "Williams", "Brown", "Clarke", "Thompson", "Morgan", "Grant", "Francis",
            "Bailey", "Bennett", "Richards", "Henry", "Samuels", "Reid",
        ],
        female: &[
            "Marcia", "Beverley", "Claudette", "Shanice", "Keisha", "Jasmine", "Patricia",
            "Marlene", "Yvonne", "Tanisha",
        ],
        male: &[
            "Winston", "Delroy", "Errol", "Jermaine", "Tyrone", "Leroy", "Marcus", "Trevor",
            "Dwayne", "Andre",
        ],
    },
    Pool {
        // East / South-East Asian
        weight: 5,
        family: &[
            "Wong", "Chan", "Li", "Zhang", "Wang", "Chen", "Liu", "Nguyễn", "Tran", "Le", "Santos",
            "Reyes", "Cruz", "Kim", "Lee",
        ],
        female: &[
            "Mei", "Xin", "Li Na", "Thi Lan", "Hoa", "Maria Clara", "Joy", "Ji-woo", "Yuki",
            "Grace",
        ],
        male: &[
            "Wei", "Jun", "Hao", "Minh", "Tuan", "Jose Mari", "Paolo", "Min-jun", "Hiroshi",
            "Kevin",
        ],
    },
    Pool {
        // Middle Eastern, Turkish, Kurdish
        weight: 5,
        family: &[
            "Yılmaz", "Şahin", "Öztürk", "Demir", "Kaya", "Çelik", "Al-Sayed", "Haddad",
            "Mansour", "Karimi", "Hosseini", "Ahmadi", "Abdullah", "Aziz",
        ],
        female: &[
            "Ayşe", "Elif", "Zeynep", "Leyla", "Yasmin", "Noor", "Rana", "Shirin", "Dilan",
            "Mariam",
        ],
        male: &[
            "Mehmet", "Mustafa", "Emre", "Ali", "Hassan", "Karim", "Reza", "Omar", "Serkan",
            "Dara",
        ],
    },
    Pool {
        // Latin American / Brazilian
        weight: 4,
        family: &[
            "Rodríguez", "González", "Hernández", "López", "Martínez", "Pereira", "Oliveira",
            "Souza", "Ramírez", "Gómez", "Santos", "Alves",
        ],
        female: &[
            "María José", "Camila", "Valentina", "Luisa", "Gabriela", "Fernanda", "Ana Paula",
            "Daniela",
        ],
        male: &[
            "Juan Carlos", "Luis", "Carlos", "Andrés", "Felipe", "Thiago", "Rafael", "Mateus",
        ],
    },
];

/// Formal names with the nickname a crew may be told.
pub(crate) const NICKNAMES: &[(&str, &str)] = &[
    ("Robert", "Bob"),
    ("Elizabeth", "Liz"),
    ("William", "Bill"),
    ("Margaret", "Peggy"),
    ("Richard", "Dick"),
    ("James", "Jim"),
    ("Katherine", "Kate"),
    ("Edward", "Ted"),
    ("Thomas", "Tom"),
    ("Anthony", "Tony"),
    ("Patricia", "Pat"),
    ("Susan", "Sue"),
    ("Jennifer", "Jenny"),
    ("Michael", "Mike"),
    ("Alexander", "Alex"),
    ("Victoria", "Vicky"),
    ("Rebecca", "Becky"),
    ("Christopher", "Chris"),
    ("Daniel", "Dan"),
    ("Joseph", "Joe"),
];

pub(crate) const CLINICIAN_FAMILY: &[&str] = &[
    "Okafor",
    "Shah",
    "Williams",
    "Nowak",
    "Chen",
    "O'Neill",
    "Mensah",
    "Rahman",
    "Taylor",
    "Haddad",
    "Fernandes",
    "Campbell",
];

pub(crate) const CLINICIAN_ROLE: &[&str] = &[
    "GP",
    "Consultant geriatrician",
    "Palliative care consultant",
    "Consultant physician",
    "Specialty registrar",
    "Community matron",
];

// ---------------------------------------------------------------------------------------------
// Clinical rules (codes from edge_proto::codes, resolved once)
// ---------------------------------------------------------------------------------------------

/// Age bands for prevalence: <18, 18–44, 45–64, 65–74, 75–84, 85+.
pub(crate) fn band(age: i64) -> usize {
    match age {
        ..=17 => 0,
        18..=44 => 1,
        45..=64 => 2,
        65..=74 => 3,
        75..=84 => 4,
        _ => 5,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SexOnly {
    Any,
    Female,
    Male,
}

/// (SNOMED code, prevalence by age band, sex, may resolve)
type Prev = (&'static str, [f64; 6], SexOnly, bool);

#[rustfmt::skip]
const PREVALENCE: &[Prev] = &[
    ("38341003", [0.001, 0.05, 0.22, 0.45, 0.55, 0.60], SexOnly::Any, false), // hypertension
    ("44054006", [0.0005, 0.02, 0.10, 0.18, 0.20, 0.18], SexOnly::Any, false), // T2DM
    ("46635009", [0.003, 0.005, 0.005, 0.004, 0.003, 0.002], SexOnly::Any, false), // T1DM
    ("195967001", [0.09, 0.08, 0.08, 0.08, 0.08, 0.07], SexOnly::Any, true), // asthma
    ("13645005", [0.0, 0.002, 0.03, 0.07, 0.09, 0.09], SexOnly::Any, false), // COPD
    ("49436004", [0.0, 0.002, 0.015, 0.07, 0.12, 0.18], SexOnly::Any, false), // AF
    ("84114007", [0.0, 0.001, 0.008, 0.03, 0.06, 0.10], SexOnly::Any, false), // heart failure
    ("414545008", [0.0, 0.003, 0.04, 0.10, 0.14, 0.16], SexOnly::Any, false), // IHD
    ("22298006", [0.0, 0.001, 0.015, 0.04, 0.06, 0.07], SexOnly::Any, false), // MI
    ("230690007", [0.0, 0.002, 0.01, 0.03, 0.05, 0.08], SexOnly::Any, false), // stroke
    ("266257000", [0.0, 0.001, 0.008, 0.02, 0.03, 0.04], SexOnly::Any, false), // TIA
    ("84757009", [0.005, 0.008, 0.008, 0.008, 0.008, 0.008], SexOnly::Any, false), // epilepsy
    ("52448006", [0.0, 0.0, 0.002, 0.02, 0.07, 0.20], SexOnly::Any, false), // dementia
    ("709044004", [0.0, 0.005, 0.03, 0.10, 0.18, 0.25], SexOnly::Any, false), // CKD
    ("363346000", [0.001, 0.004, 0.02, 0.04, 0.05, 0.05], SexOnly::Any, true), // cancer
    ("254837009", [0.0, 0.002, 0.02, 0.04, 0.05, 0.05], SexOnly::Female, true), // breast
    ("399068003", [0.0, 0.0, 0.01, 0.04, 0.07, 0.08], SexOnly::Male, false), // prostate
    ("35489007", [0.02, 0.10, 0.10, 0.08, 0.07, 0.06], SexOnly::Any, true), // depression
    ("197480006", [0.03, 0.08, 0.07, 0.05, 0.04, 0.03], SexOnly::Any, true), // anxiety
    ("58214004", [0.0, 0.007, 0.007, 0.005, 0.004, 0.003], SexOnly::Any, false), // schizophrenia
    ("13746004", [0.0, 0.006, 0.006, 0.005, 0.004, 0.003], SexOnly::Any, false), // bipolar
    ("40930008", [0.001, 0.01, 0.03, 0.05, 0.06, 0.06], SexOnly::Any, false), // hypothyroidism
    ("69896004", [0.0005, 0.004, 0.01, 0.015, 0.015, 0.015], SexOnly::Any, false), // RA
    ("396275006", [0.0, 0.01, 0.10, 0.20, 0.25, 0.28], SexOnly::Any, false), // OA
    ("127040003", [0.002, 0.001, 0.0005, 0.0003, 0.0, 0.0], SexOnly::Any, false), // sickle cell
    ("86406008", [0.0005, 0.004, 0.005, 0.003, 0.001, 0.0005], SexOnly::Any, false), // HIV
    ("49049000", [0.0, 0.0, 0.002, 0.006, 0.015, 0.02], SexOnly::Any, false), // Parkinson's
    ("24700007", [0.0, 0.002, 0.003, 0.002, 0.001, 0.001], SexOnly::Any, false), // MS
    ("128053003", [0.0, 0.003, 0.008, 0.015, 0.02, 0.02], SexOnly::Any, true), // DVT
    ("59282003", [0.0, 0.001, 0.004, 0.008, 0.01, 0.01], SexOnly::Any, true), // PE
    ("248279007", [0.0, 0.0, 0.005, 0.05, 0.20, 0.45], SexOnly::Any, false), // frailty
    ("363732003", [0.0001, 0.0002, 0.0002, 0.0002, 0.0002, 0.0002], SexOnly::Any, false), // Addison's
    ("110359009", [0.008, 0.005, 0.004, 0.003, 0.002, 0.001], SexOnly::Any, false), // LD
    ("408856003", [0.015, 0.008, 0.003, 0.001, 0.0005, 0.0], SexOnly::Any, false), // autism
    ("190905008", [0.0004, 0.0003, 0.0001, 0.0, 0.0, 0.0], SexOnly::Any, false), // CF
    ("41040004", [0.001, 0.0008, 0.0005, 0.0002, 0.0, 0.0], SexOnly::Any, false), // Down's
    ("82423001", [0.002, 0.03, 0.07, 0.08, 0.09, 0.09], SexOnly::Any, false), // chronic pain
    ("15188001", [0.002, 0.003, 0.02, 0.08, 0.15, 0.30], SexOnly::Any, false), // hearing loss
    ("7200002", [0.0, 0.01, 0.012, 0.008, 0.004, 0.002], SexOnly::Any, true), // alcoholism
];

/// Conditions that can begin in childhood (onset from birth).
const CHILDHOOD_ONSET: &[&str] = &[
    "46635009",
    "195967001",
    "84757009",
    "110359009",
    "408856003",
    "190905008",
    "127040003",
    "41040004",
];

/// With probability `p`, a patient with `condition` gets one medicine chosen from `options`
/// (dm+d code, or `~` + the start of a narrative medicine's text), by weight.
struct MedRule {
    condition: &'static str,
    p: f64,
    options: &'static [(&'static str, u32)],
}

const fn rule(condition: &'static str, p: f64, options: &'static [(&'static str, u32)]) -> MedRule {
    MedRule {
        condition,
        p,
        options,
    }
}

pub(crate) const APIXABAN_5: &str = "42206511000001102";
pub(crate) const APIXABAN_2_5: &str = "42206411000001101";
const DOACS_AND_WARFARIN: &[(&str, u32)] = &[
    (APIXABAN_5, 35),
    (APIXABAN_2_5, 10),
    ("19842211000001107", 15),
    ("29903411000001101", 10),
    ("19469811000001101", 4),
    ("13532811000001109", 2),
    ("42217511000001103", 8),
    ("42217611000001104", 6),
    ("42217911000001105", 4),
    ("~Warfarin - dose as per INR", 1),
];
const STATINS: &[(&str, u32)] = &[
    ("39695411000001103", 6),
    ("320000009", 3),
    ("42297211000001100", 2),
];
const PPIS: &[(&str, u32)] = &[
    ("42354511000001109", 3),
    ("42354611000001108", 1),
    ("42353711000001101", 1),
];

#[rustfmt::skip]
const MED_RULES: &[MedRule] = &[
    rule("38341003", 0.6, &[("319283006", 20), ("~Ramipril", 1), ("~Bisoprolol", 1)]),
    rule("44054006", 0.85, &[("325278007", 1)]),
    rule("44054006", 0.2, &[("11933011000001106", 5), ("17608511000001103", 3), ("3277211000001104", 3)]),
    rule("46635009", 1.0, &[("11933011000001106", 3), ("7589411000001100", 2)]),
    rule("46635009", 0.95, &[
        ("3282211000001106", 3), ("13877811000001105", 2), ("~Insulin as per diabetes team", 1),
    ]),
    rule("195967001", 0.9, &[("39113611000001102", 1)]),
    rule("195967001", 0.4, &[("408063002", 1)]),
    rule("195967001", 0.05, &[("325427002", 1)]),
    rule("13645005", 0.8, &[("39113611000001102", 1)]),
    rule("13645005", 0.4, &[("408063002", 6), ("~Tiotropium", 1)]),
    rule("13645005", 0.1, &[("325427002", 1)]),
    rule("49436004", 0.8, DOACS_AND_WARFARIN),
    rule("49436004", 0.08, &[("~Digoxin", 1)]),
    rule("84114007", 0.8, &[("317972000", 1)]),
    rule("414545008", 0.75, &[
        ("319773006", 40), ("319781007", 15), ("319799004", 30), ("704465002", 10), ("443469008", 3),
    ]),
    rule("414545008", 0.7, STATINS),
    rule("414545008", 0.1, &[("~GTN spray", 1)]),
    rule("22298006", 0.7, &[("319773006", 3), ("704465002", 2), ("319799004", 2)]),
    rule("22298006", 0.7, STATINS),
    rule("230690007", 0.7, &[("319799004", 1)]),
    rule("230690007", 0.7, STATINS),
    rule("266257000", 0.6, &[("319799004", 1)]),
    rule("128053003", 0.4, &[(APIXABAN_5, 1), ("19842211000001107", 1)]),
    rule("59282003", 0.5, &[(APIXABAN_5, 1), ("19842211000001107", 1), ("~Enoxaparin", 1)]),
    rule("84757009", 0.35, &[("11475211000001102", 1)]),
    rule("84757009", 0.35, &[("10225811000001107", 1)]),
    rule("84757009", 0.25, &[("~Levetiracetam", 1)]),
    rule("84757009", 0.1, &[("~Buccal midazolam", 1)]),
    rule("52448006", 0.15, &[("~Donepezil", 1)]),
    rule("363346000", 0.3, &[
        ("36128311000001101", 3), ("42009811000001101", 3), ("36120011000001101", 2),
        ("3077711000001104", 1),
    ]),
    rule("363346000", 0.1, &[("~Capecitabine", 1)]),
    rule("35489007", 0.06, &[("~Sertraline", 1)]),
    rule("58214004", 0.2, &[("~Clozapine", 1)]),
    rule("13746004", 0.6, &[("766311000001100", 2), ("13177001000001108", 1), ("~Lithium - dose", 1)]),
    rule("40930008", 0.8, &[("374296008", 12), ("~Levothyroxine", 1)]),
    rule("69896004", 0.45, &[("326874007", 6), ("~Methotrexate 15mg", 1)]),
    rule("69896004", 0.15, &[("325443009", 1)]),
    rule("69896004", 0.05, &[("~Azathioprine", 1)]),
    rule("396275006", 0.4, &[("322236009", 4), ("42009811000001101", 2), ("42010411000001105", 1)]),
    rule("396275006", 0.05, &[("9567411000001100", 1)]),
    rule("82423001", 0.5, &[
        ("42009811000001101", 6), ("3077711000001104", 2), ("9567411000001100", 2),
        ("23657811000001102", 1), ("14985811000001101", 1), ("36126511000001106", 1),
    ]),
    rule("127040003", 0.3, &[("36128311000001101", 2), ("~Oramorph", 1)]),
    rule("363732003", 0.9, &[("~Hydrocortisone 10mg", 1)]),
];

/// Age-based prescribing not tied to one condition: (min age, probability, options).
/// (minimum age, probability, options) — see [`MedRule`].
type AgeRule = (i64, f64, &'static [(&'static str, u32)]);

#[rustfmt::skip]
const AGE_RULES: &[AgeRule] = &[
    (45, 0.12, STATINS),
    (65, 0.35, STATINS),
    (18, 0.06, &[("322236009", 1)]),
    (65, 0.20, &[("322236009", 1)]),
    (75, 0.20, &[("322236009", 1)]),
    (65, 0.12, PPIS),
    (75, 0.15, PPIS),
    (65, 0.08, &[("319773006", 1)]),
    (60, 0.10, &[("319283006", 1)]),
    (70, 0.10, &[("317972000", 1)]),
    (75, 0.08, &[("374296008", 1)]),
    (75, 0.08, &[("42009811000001101", 2), ("42010411000001105", 1)]),
    (0, 0.025, &[("323509004", 1)]),
    (18, 0.001, &[("~Tacrolimus", 1)]),
    (5, 0.004, &[("~EpiPen", 1)]),
];

/// Allergies as sources send them in free text: (text, category, high criticality).
pub(crate) const NARRATIVE_ALLERGIES: &[(&str, Option<AllergenCategory>, bool)] = &[
    (
        "Allergic to Elastoplast - blisters",
        Some(AllergenCategory::Environment),
        false,
    ),
    (
        "Penicillin? rash as a child - mother unsure",
        Some(AllergenCategory::Medication),
        false,
    ),
    (
        "Reaction to iodinated contrast 2016 - flushing and breathlessness",
        Some(AllergenCategory::Medication),
        true,
    ),
    (
        "Statins - muscle pains (intolerance)",
        Some(AllergenCategory::Medication),
        false,
    ),
    (
        "NSAIDs make asthma worse",
        Some(AllergenCategory::Medication),
        false,
    ),
    (
        "Nickel - contact dermatitis",
        Some(AllergenCategory::Environment),
        false,
    ),
    (
        "Kiwi fruit - mouth and lip swelling",
        Some(AllergenCategory::Food),
        true,
    ),
    (
        "Chlorhexidine - anaphylaxis in theatre 2019",
        Some(AllergenCategory::Medication),
        true,
    ),
    ("Hair dye (PPD) - facial swelling", None, true),
    (
        "Bee and wasp stings - carries EpiPen",
        Some(AllergenCategory::Environment),
        true,
    ),
];

/// Weighted medicine choices.
type Options = Vec<(MedRef, u32)>;

/// Everything resolved against `edge_proto::codes` once.
#[derive(Debug)]
pub(crate) struct Rules {
    pub(crate) conditions: Vec<CondRule>,
    /// (index into `conditions`, probability, options)
    pub(crate) med_rules: Vec<(usize, f64, Options)>,
    /// (minimum age, probability, options)
    pub(crate) age_rules: Vec<(i64, f64, Options)>,
    pub(crate) allergens: &'static [Allergen],
    pub(crate) reactions: &'static [Reaction],
}

#[derive(Debug)]
pub(crate) struct CondRule {
    pub(crate) cond: &'static codes::Condition,
    pub(crate) prev: [f64; 6],
    pub(crate) sex: SexOnly,
    pub(crate) resolvable: bool,
    pub(crate) childhood: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MedRef {
    Coded(&'static Medicine),
    Narrative(&'static NarrativeMedicine),
}

impl MedRef {
    pub(crate) fn high_risk(self) -> Option<HighRiskClass> {
        match self {
            MedRef::Coded(m) => m.high_risk,
            MedRef::Narrative(n) => n.high_risk,
        }
    }
}

/// Medicines a patient takes only one of at a time.
pub(crate) fn exclusive_group(med: MedRef) -> Option<&'static str> {
    let code = match med {
        MedRef::Coded(m) => m.code,
        MedRef::Narrative(_) => "",
    };
    if med.high_risk() == Some(HighRiskClass::Anticoagulant) {
        Some("anticoagulant")
    } else if STATINS.iter().any(|s| s.0 == code) {
        Some("statin")
    } else if PPIS.iter().any(|s| s.0 == code) {
        Some("ppi")
    } else {
        None
    }
}

pub(crate) fn resolve_med(key: &str) -> Option<MedRef> {
    match key.strip_prefix('~') {
        Some(prefix) => codes::NARRATIVE_MEDICINES
            .iter()
            .find(|n| n.text.starts_with(prefix))
            .map(MedRef::Narrative),
        None => codes::medicine(key)
            .filter(|m| m.code == key)
            .map(MedRef::Coded),
    }
}

fn resolve_options(options: &[(&str, u32)]) -> Vec<(MedRef, u32)> {
    options
        .iter()
        .filter_map(|(k, w)| resolve_med(k).map(|m| (m, *w)))
        .collect()
}

pub(crate) fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let conditions: Vec<CondRule> = PREVALENCE
            .iter()
            .filter_map(|(code, prev, sex, resolvable)| {
                codes::condition_by_code(code).map(|cond| CondRule {
                    cond,
                    prev: *prev,
                    sex: *sex,
                    resolvable: *resolvable,
                    childhood: CHILDHOOD_ONSET.contains(code),
                })
            })
            .collect();
        let med_rules = MED_RULES
            .iter()
            .filter_map(|r| {
                let i = conditions.iter().position(|c| c.cond.code == r.condition)?;
                Some((i, r.p, resolve_options(r.options)))
            })
            .collect();
        let age_rules = AGE_RULES
            .iter()
            .map(|(age, p, o)| (*age, *p, resolve_options(o)))
            .collect();
        Rules {
            conditions,
            med_rules,
            age_rules,
            allergens: codes::ALLERGENS,
            reactions: codes::REACTIONS,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_resolve_against_the_code_lists() {
        let r = rules();
        assert_eq!(
            r.conditions.len(),
            PREVALENCE.len(),
            "every prevalence code is in codes::CONDITIONS"
        );
        assert_eq!(
            r.med_rules.len(),
            MED_RULES.len(),
            "every rule's condition is known"
        );
        for (rule, (_, _, options)) in MED_RULES.iter().zip(&r.med_rules) {
            assert_eq!(
                options.len(),
                rule.options.len(),
                "unresolved option in rule for {}",
                rule.condition
            );
        }
        for ((_, _, o), (_, _, resolved)) in AGE_RULES.iter().zip(&r.age_rules) {
            assert_eq!(o.len(), resolved.len());
        }
        for code in CHILDHOOD_ONSET {
            assert!(codes::condition_by_code(code).is_some(), "{code}");
        }
        assert!(resolve_med(APIXABAN_5).is_some() && resolve_med("42354511000001109").is_some());
        for p in PRACTICES {
            for d in p.districts {
                assert!(
                    DISTRICTS.iter().any(|x| x.0 == *d),
                    "{} lists unknown district {d}",
                    p.org.ods
                );
            }
        }
    }
}
