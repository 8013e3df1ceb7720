//! The built-in nickname table (`nicknames.txt`, compiled in): which given names are nicknames
//! of each other (`Bob` ~ `Robert`, `Peggy` ~ `Margaret`). Each line of the file is a group;
//! a name may be on several. The table is parsed once, on first use.
//!
//! The index (`index.rs`) stores each given-name token's groups ([`nickname_groups`]) and scores
//! a shared group as a nickname match; [`nickname_equivalent`] and [`nickname_group_count`] are
//! public as `search::…`.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::normalise::normalise_name;

struct Nicknames {
    /// Name → the groups (lines of nicknames.txt) it is on.
    groups_of: HashMap<&'static str, Vec<u16>>,
}

fn nicknames() -> &'static Nicknames {
    static TABLE: OnceLock<Nicknames> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut groups_of: HashMap<&'static str, Vec<u16>> = HashMap::new();
        let lines = include_str!("../nicknames.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'));
        for (group, (formal, nicks)) in lines.enumerate() {
            let Ok(group) = u16::try_from(group) else {
                break;
            };
            for name in std::iter::once(formal).chain(nicks.split_whitespace()) {
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
                    continue;
                }
                let g = groups_of.entry(name).or_default();
                if !g.contains(&group) {
                    g.push(group);
                }
            }
        }
        Nicknames { groups_of }
    })
}

/// The nickname groups a normalised given name is on (none if it is on no line).
pub(super) fn nickname_groups(name: &str) -> Vec<u16> {
    nicknames().groups_of.get(name).cloned().unwrap_or_default()
}

/// Whether two given names are the same name or nicknames of each other (after
/// normalisation): `Bob`/`Robert`, `Peggy`/`Margaret`, `Rob`/`Bobby`.
pub fn nickname_equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (normalise_name(a), normalise_name(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let ga = nickname_groups(&a);
    nickname_groups(&b).iter().any(|g| ga.contains(g))
}

/// How many nickname groups the built-in table has (for tests and docs).
pub fn nickname_group_count() -> usize {
    let t = nicknames();
    let mut all: Vec<u16> = t.groups_of.values().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nickname_table_is_well_formed() {
        assert!(nickname_group_count() >= 100);
        for name in nicknames().groups_of.keys() {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
        }
    }
}
