//! Compiles the extension rules' `users` into the [`UserTable`] the SIP
//! reader steps (controller side; needs `alloc`).
//!
//! A user entry is one of:
//! - a name, matched whole: `6010`, `alice`;
//! - a number pattern, digits and `x` (any one digit) only, with at least
//!   one `x`: `2xx` is every three-digit user starting with 2;
//! - either of those ending in `*` (anything, or nothing, after it):
//!   `sales-*`, `60*`.
//!
//! Matching ignores ASCII case. The patterns are anchored at both ends, so
//! the automaton is built by subset construction over (pattern, position)
//! sets; its states are few (about one per distinct prefix).
extern crate alloc;

use alloc::{collections::BTreeMap, vec, vec::Vec};

use crate::sip_rules::{
    UserTable, MAX_EXTENSION_RULES, MAX_USER_NAME, USER_CLASSES, USER_START, USER_STATES,
};

/// One element of a user pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// This byte (lower case).
    Byte(u8),
    /// Any one digit.
    Digit,
    /// Anything, or nothing, to the end (last only).
    Star,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("empty user")]
    Empty,
    #[error("longer than {MAX_USER_NAME} bytes")]
    TooLong,
    #[error("`*` may only end a user pattern (`sales-*`)")]
    StarInside,
    #[error("a user holds no blank, control character, `@`, `:` or `;`")]
    BadByte,
    #[error("the users need {needed} automaton states; at most {USER_STATES} fit: use patterns (`2xx`, `sales-*`) or fewer names")]
    TooManyStates { needed: usize },
    #[error("the users use more than {} distinct characters", USER_CLASSES - 2)]
    TooManyClasses,
    #[error("more than {MAX_EXTENSION_RULES} extension rules")]
    TooManyRules,
}

/// Reads one `users` entry.
pub fn parse(text: &str) -> Result<Vec<Item>, UserError> {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(UserError::Empty);
    }
    if bytes.len() > MAX_USER_NAME {
        return Err(UserError::TooLong);
    }
    let (body, star) = match bytes.split_last() {
        Some((b'*', body)) => (body, true),
        _ => (bytes, false),
    };
    if body.contains(&b'*') {
        return Err(UserError::StarInside);
    }
    if body
        .iter()
        .any(|&b| b <= b' ' || b == 0x7f || matches!(b, b'@' | b':' | b';'))
    {
        return Err(UserError::BadByte);
    }
    let number_pattern = body.iter().any(|b| matches!(b, b'x' | b'X'))
        && body
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'x' | b'X'));
    let mut items: Vec<Item> = body
        .iter()
        .map(|&b| {
            if number_pattern && matches!(b, b'x' | b'X') {
                Item::Digit
            } else {
                Item::Byte(b.to_ascii_lowercase())
            }
        })
        .collect();
    if star {
        items.push(Item::Star);
    }
    Ok(items)
}

/// Builds the automaton: `rules[i]` holds rule i's parsed users.
pub fn compile(rules: &[Vec<Vec<Item>>]) -> Result<UserTable, UserError> {
    if rules.len() > MAX_EXTENSION_RULES {
        return Err(UserError::TooManyRules);
    }
    let mut table = UserTable::EMPTY;
    let patterns: Vec<(usize, &[Item])> = rules
        .iter()
        .enumerate()
        .flat_map(|(rule, users)| users.iter().map(move |items| (rule, items.as_slice())))
        .collect();
    if patterns.is_empty() {
        return Ok(table);
    }

    // Classes: one per byte named (both cases), one for the other digits.
    let mut next_class = 1u8;
    for (_, items) in &patterns {
        for item in items.iter() {
            if let Item::Byte(b) = item {
                if table.class[*b as usize] == 0 {
                    if next_class as usize >= USER_CLASSES {
                        return Err(UserError::TooManyClasses);
                    }
                    table.class[*b as usize] = next_class;
                    table.class[b.to_ascii_uppercase() as usize] = next_class;
                    next_class += 1;
                }
            }
        }
    }
    let other_digits = next_class;
    let mut digit_classes = [false; USER_CLASSES];
    for digit in b'0'..=b'9' {
        if table.class[digit as usize] == 0 {
            if other_digits as usize >= USER_CLASSES {
                return Err(UserError::TooManyClasses);
            }
            table.class[digit as usize] = other_digits;
            next_class = other_digits + 1;
        }
        digit_classes[table.class[digit as usize] as usize] = true;
    }
    let classes = next_class as usize;
    // The byte each class stands for (0 for the shared digit class and class 0).
    let mut class_byte = vec![None; classes];
    for byte in 0..=255u8 {
        let class = table.class[byte as usize] as usize;
        if class != 0 && class != other_digits as usize && class_byte[class].is_none() {
            class_byte[class] = Some(byte.to_ascii_lowercase());
        }
    }
    let matches = |item: Item, class: usize| match item {
        Item::Byte(b) => class_byte[class] == Some(b),
        Item::Digit => digit_classes[class],
        Item::Star => true,
    };

    // Subset construction; state 0 is the empty set (dead), 1 the start.
    type Set = Vec<(u16, u8)>;
    let start: Set = (0..patterns.len()).map(|p| (p as u16, 0)).collect();
    let mut ids: BTreeMap<Set, u16> = BTreeMap::new();
    let mut sets: Vec<Set> = vec![Vec::new(), start.clone()];
    ids.insert(Vec::new(), 0);
    ids.insert(start, USER_START);
    let mut rows: Vec<Vec<u16>> = Vec::new();
    let mut state = 0;
    while state < sets.len() {
        let mut row = vec![0u16; classes];
        for (class, slot) in row.iter_mut().enumerate() {
            let mut next: Set = Vec::new();
            for &(p, at) in &sets[state] {
                let items = patterns[p as usize].1;
                let Some(&item) = items.get(at as usize) else {
                    continue;
                };
                if item == Item::Star {
                    next.push((p, at));
                } else if matches(item, class) {
                    next.push((p, at + 1));
                }
            }
            next.sort_unstable();
            next.dedup();
            let id = match ids.get(&next) {
                Some(id) => *id,
                None => {
                    let id = sets.len();
                    if id >= USER_STATES {
                        return Err(UserError::TooManyStates { needed: id + 1 });
                    }
                    ids.insert(next.clone(), id as u16);
                    sets.push(next);
                    id as u16
                }
            };
            *slot = id;
        }
        rows.push(row);
        state += 1;
    }
    for (state, set) in sets.iter().enumerate() {
        let mut mask = 0u64;
        for &(p, at) in set {
            let (rule, items) = patterns[p as usize];
            let rest = &items[at as usize..];
            if rest.is_empty() || rest == [Item::Star] {
                mask |= 1u64 << rule;
            }
        }
        table.accept[state] = mask;
        let base = state * USER_CLASSES;
        table.next[base..base + classes].copy_from_slice(&rows[state]);
    }
    Ok(table)
}

/// Whether `user` matches `items`, read plainly (the tests' oracle).
pub fn matches(items: &[Item], user: &[u8]) -> bool {
    match items.split_first() {
        None => user.is_empty(),
        Some((Item::Star, _)) => true,
        Some((item, rest)) => match user.split_first() {
            None => false,
            Some((&byte, tail)) => {
                let fits = match item {
                    Item::Byte(b) => byte.to_ascii_lowercase() == *b,
                    Item::Digit => byte.is_ascii_digit(),
                    Item::Star => true,
                };
                fits && matches(rest, tail)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::{string::String, vec::Vec};

    fn rules(spec: &[&[&str]]) -> Vec<Vec<Vec<Item>>> {
        spec.iter()
            .map(|users| users.iter().map(|u| parse(u).expect("valid")).collect())
            .collect()
    }

    /// The reader stops stepping a user at state 0: it must lead nowhere
    /// else and name no rule.
    #[test]
    fn the_dead_state_stays_dead() {
        let spec: &[&[&str]] = &[&["6010", "6011"], &["2xx"], &["sales-*", "60*"]];
        let table = compile(&rules(spec)).expect("compiles");
        assert!(table.next[..USER_CLASSES].iter().all(|&next| next == 0));
        assert_eq!(table.rules(0), 0);
        assert_eq!(table.step(USER_START, b'q'), 0);
    }

    #[test]
    fn names_patterns_and_prefixes() {
        let spec: &[&[&str]] = &[&["6010", "6011"], &["2xx"], &["sales-*", "60*"], &["alex"]];
        let table = compile(&rules(spec)).expect("compiles");
        let rules_of = |u: &str| table.rules_of(u.as_bytes());
        assert_eq!(rules_of("6010"), 0b0101);
        assert_eq!(rules_of("6012"), 0b0100);
        assert_eq!(rules_of("60"), 0b0100);
        assert_eq!(rules_of("601"), 0b0100);
        assert_eq!(rules_of("201"), 0b0010);
        assert_eq!(rules_of("2011"), 0);
        assert_eq!(rules_of("20"), 0);
        assert_eq!(rules_of("2a1"), 0);
        assert_eq!(rules_of("Sales-Bob"), 0b0100);
        assert_eq!(rules_of("sales-"), 0b0100);
        assert_eq!(rules_of("sales"), 0);
        assert_eq!(rules_of("ALEX"), 0b1000);
        assert_eq!(rules_of("ale1"), 0, "x is a digit only in number patterns");
        assert_eq!(rules_of(""), 0);
        assert_eq!(rules_of("1001"), 0);
    }

    #[test]
    fn the_automaton_agrees_with_plain_matching() {
        let spec: &[&[&str]] = &[
            &["6010", "60x1", "x*"],
            &["2xx", "2*"],
            &["a-*", "abc", "ab"],
            &["9xxx", "900"],
        ];
        let parsed = rules(spec);
        let table = compile(&parsed).expect("compiles");
        // Every string over a small alphabet up to length 4.
        let alphabet = b"0126-abcA9x";
        let mut names: Vec<Vec<u8>> = vec![Vec::new()];
        let mut frontier = names.clone();
        for _ in 0..4 {
            let mut grown = Vec::new();
            for name in &frontier {
                for &b in alphabet {
                    let mut n = name.clone();
                    n.push(b);
                    grown.push(n);
                }
            }
            names.extend(grown.iter().cloned());
            frontier = grown;
        }
        for name in names {
            let mut want = 0u64;
            for (rule, users) in parsed.iter().enumerate() {
                if users.iter().any(|items| matches(items, &name)) {
                    want |= 1 << rule;
                }
            }
            assert_eq!(
                table.rules_of(&name),
                want,
                "{}",
                String::from_utf8_lossy(&name)
            );
        }
    }

    /// The reader notes the rules of the users it copies, as it copies them.
    #[test]
    fn the_reader_finds_the_rules_of_each_user() {
        use crate::sip_scan::{scan, PatternTable};
        let spec: &[&[&str]] = &[&["6010"], &["2xx", "sales-*"]];
        let mut table = PatternTable::EMPTY;
        table.users = compile(&rules(spec)).expect("compiles");
        let read = |headers: &str| {
            let message = std::format!(
                "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{headers}\
Call-ID: 1\r\nCSeq: 1 REGISTER\r\n\r\n"
            );
            let out = scan(message.as_bytes(), &table);
            (out.to_rules, out.from_rules, out.auth_rules)
        };
        assert_eq!(
            read("To: <sip:6010@pbx>\r\nFrom: \"Bob\" <sip:201@pbx>;tag=1\r\n"),
            (1, 2, 0)
        );
        assert_eq!(
            read("t: sip:6010@pbx\r\nf: <sip:1001@pbx>;tag=1\r\n"),
            (1, 0, 0)
        );
        assert_eq!(read("To: <sip:%36010@pbx>\r\n"), (1, 0, 0), "escaped");
        assert_eq!(read("To: <sip:%3@pbx>\r\n"), (0, 0, 0), "a broken escape");
        assert_eq!(
            read("From: <sip:6010:secret@pbx>;tag=1\r\n"),
            (0, 1, 0),
            "password"
        );
        assert_eq!(read("From: <sip:pbx:5060>;tag=1\r\n"), (0, 0, 0), "no user");
        assert_eq!(read("To: <tel:6010>\r\n"), (1, 0, 0), "tel");
        assert_eq!(read("To: <sip:SALES-x@pbx>\r\n"), (2, 0, 0), "case");
        assert_eq!(
            read("Authorization: Digest realm=\"pbx\", username=\"6010\", nonce=\"n\"\r\n"),
            (0, 0, 1)
        );
        assert_eq!(
            read("Proxy-Authorization: Digest username=201,realm=pbx\r\n"),
            (0, 0, 2)
        );
        // A duplicated To: the first one counts.
        assert_eq!(
            read("To: <sip:1001@pbx>\r\nTo: <sip:6010@pbx>\r\n"),
            (0, 0, 0)
        );
        // The Request-URI user is decoded too (the dial rules read it).
        let out = scan(
            b"INVITE sip:%30%3044@pbx SIP/2.0\r\nTo: <sip:x@pbx>\r\n\r\n",
            &table,
        );
        assert_eq!(out.request_user.value(), b"0044");
    }

    #[test]
    fn bad_users_are_refused() {
        assert_eq!(parse(""), Err(UserError::Empty));
        assert_eq!(parse("a*b"), Err(UserError::StarInside));
        assert_eq!(parse("a b"), Err(UserError::BadByte));
        assert_eq!(parse("a@b"), Err(UserError::BadByte));
        assert_eq!(parse(&"1".repeat(65)), Err(UserError::TooLong));
        let many: Vec<Vec<Vec<Item>>> = (0..65).map(|_| Vec::new()).collect();
        assert_eq!(compile(&many).err(), Some(UserError::TooManyRules));
    }

    #[test]
    fn many_extension_numbers_fit() {
        // 400 four-digit extensions, one rule each group of ten.
        let parsed: Vec<Vec<Vec<Item>>> = (0..40)
            .map(|group| {
                (0..10)
                    .map(|i| parse(&std::format!("6{:03}", group * 10 + i)).expect("valid"))
                    .collect()
            })
            .collect();
        let table = compile(&parsed).expect("fits");
        assert_eq!(table.rules_of(b"6123"), 1 << 12);
        assert_eq!(table.rules_of(b"7123"), 0);
    }
}
