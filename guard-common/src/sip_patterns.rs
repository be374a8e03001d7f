//! Compiles scanner fingerprints into the [`PatternTable`] the XDP program
//! steps (controller side; needs `alloc`).
//!
//! A hand-written Aho-Corasick construction rather than the aho-corasick
//! crate: the table needs a start-of-value symbol outside the byte alphabet
//! (for prefix patterns), one root per field, and its transitions exported
//! as a dense array over byte classes, none of which the crate's automata
//! expose. The crate serves as the oracle in the tests.
extern crate alloc;

use alloc::{boxed::Box, collections::VecDeque, vec, vec::Vec};

use crate::sip_scan::{
    PatternField, PatternTable, NEXT_STATE, NEXT_STOPS, PATTERN_CLASSES, PATTERN_FIELDS,
    PATTERN_STATES, START_CLASS, STATE_STRIDE,
};

/// One fingerprint: `text` is matched ASCII case-insensitively against the
/// value of `field` (after its leading blanks; a folded line reads as one
/// space), anywhere in it or, with `prefix`, at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern<'a> {
    pub field: PatternField,
    pub text: &'a [u8],
    pub prefix: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern {number} is empty")]
    Empty { number: usize },
    #[error("pattern {number} holds a line break or NUL, which no header value can")]
    LineBreak { number: usize },
    #[error("the patterns need {needed} automaton states; at most {PATTERN_STATES} fit: shorten or remove some")]
    TooManyStates { needed: usize },
    #[error("the patterns use more than {} distinct characters", PATTERN_CLASSES - 2)]
    TooManyClasses,
    #[error("more than {} patterns", u16::MAX - 1)]
    TooManyPatterns,
}

const NONE: u16 = u16::MAX;

/// Builds the table; pattern `i` of `patterns` reports as number `i + 1`.
/// An earlier pattern wins when several end at the same byte.
pub fn compile(patterns: &[Pattern<'_>]) -> Result<Box<PatternTable>, PatternError> {
    if patterns.len() >= u16::MAX as usize {
        return Err(PatternError::TooManyPatterns);
    }
    let mut table: Box<PatternTable> = boxed_empty();
    table.active = u32::from(!patterns.is_empty());
    let mut next_class = START_CLASS + 1;
    for (index, pattern) in patterns.iter().enumerate() {
        let number = index + 1;
        if pattern.text.is_empty() {
            return Err(PatternError::Empty { number });
        }
        for &byte in pattern.text {
            if matches!(byte, b'\r' | b'\n' | 0) {
                return Err(PatternError::LineBreak { number });
            }
            let byte = byte.to_ascii_lowercase();
            if table.class[byte as usize] == 0 {
                if next_class as usize >= PATTERN_CLASSES {
                    return Err(PatternError::TooManyClasses);
                }
                table.class[byte as usize] = next_class;
                table.class[byte.to_ascii_uppercase() as usize] = next_class;
                next_class += 1;
            }
        }
    }

    table.keys = keys(patterns, table.class[b' ' as usize] != 0);

    // The trie: state 0 is the dead state; each field with patterns gets a root.
    let mut goto: Vec<[u16; PATTERN_CLASSES]> = vec![[0; PATTERN_CLASSES]];
    let mut accept: Vec<u16> = vec![0];
    let mut roots = [0u16; PATTERN_FIELDS];
    for field in PatternField::ALL {
        let mut root = 0u16;
        for (index, pattern) in patterns.iter().enumerate() {
            if pattern.field != field {
                continue;
            }
            if root == 0 {
                root = new_state(&mut goto, &mut accept);
            }
            let classes = pattern
                .prefix
                .then_some(START_CLASS)
                .into_iter()
                .chain(pattern.text.iter().map(|&b| table.class[b as usize]));
            let mut state = root;
            for class in classes {
                let child = goto[state as usize][class as usize];
                state = if child == NONE {
                    let child = new_state(&mut goto, &mut accept);
                    goto[state as usize][class as usize] = child;
                    child
                } else {
                    child
                };
            }
            let number = (index + 1) as u16;
            let slot = &mut accept[state as usize];
            if *slot == 0 || number < *slot {
                *slot = number;
            }
        }
        roots[field as usize] = root;
    }
    if goto.len() > PATTERN_STATES {
        return Err(PatternError::TooManyStates { needed: goto.len() });
    }

    // Failure links, breadth first, turning the trie into a DFA in place.
    let mut fail = vec![0u16; goto.len()];
    for field in PatternField::ALL {
        let root = roots[field as usize];
        if root == 0 {
            continue;
        }
        let mut queue = VecDeque::new();
        for slot in goto[root as usize].iter_mut() {
            if *slot == NONE {
                *slot = root;
            } else {
                fail[*slot as usize] = root;
                queue.push_back(*slot);
            }
        }
        while let Some(state) = queue.pop_front() {
            let failed = fail[state as usize] as usize;
            if accept[state as usize] == 0 {
                accept[state as usize] = accept[failed];
            } else if accept[failed] != 0 {
                accept[state as usize] = accept[state as usize].min(accept[failed]);
            }
            let fallback = goto[failed];
            for (slot, &via_failure) in goto[state as usize].iter_mut().zip(fallback.iter()) {
                if *slot == NONE {
                    *slot = via_failure;
                } else {
                    fail[*slot as usize] = via_failure;
                    queue.push_back(*slot);
                }
            }
        }
        table.start[field as usize] = goto[root as usize][START_CLASS as usize] * STATE_STRIDE;
    }
    for (state, row) in goto.iter().enumerate() {
        let base = state * PATTERN_CLASSES;
        for (slot, &target) in table.next[base..base + PATTERN_CLASSES].iter_mut().zip(row) {
            let stops = target == 0 || accept[target as usize] != 0;
            // Fewer than PATTERN_STATES states: the offset fits (see STATE_STRIDE).
            let stored = target * STATE_STRIDE;
            *slot = if stops { stored | NEXT_STOPS } else { stored };
        }
        table.accept[state] = accept[state];
    }
    // The classes as byte offsets in a row (fewer than 128 classes: fits).
    for class in table.class.iter_mut() {
        *class *= 2;
    }
    Ok(table)
}

/// Letters from the most to the least common in SIP header values (hex
/// tags and branches, `sip`, domain names): a key is best when rare.
const COMMON_FIRST: &[u8; 26] = b"seiaptnorcldbfmhugxwykvjqz";

/// Per field: the rarest letter (lower case) every pattern of the field
/// holds in either case, 0 if none. All 0 when a pattern holds a space: a
/// folded line reads as one space, so a match could then span lines, and
/// a line without the key would not be enough to rule one out.
fn keys(patterns: &[Pattern<'_>], space_in_patterns: bool) -> [u8; PATTERN_FIELDS] {
    let mut keys = [0u8; PATTERN_FIELDS];
    if space_in_patterns {
        return keys;
    }
    for field in PatternField::ALL {
        let mut held = [true; 26];
        let mut any = false;
        for pattern in patterns.iter().filter(|p| p.field == field) {
            any = true;
            for (i, slot) in held.iter_mut().enumerate() {
                let letter = b'a' + i as u8;
                *slot &= pattern
                    .text
                    .iter()
                    .any(|b| b.to_ascii_lowercase() == letter);
            }
        }
        if !any {
            continue;
        }
        if let Some(&letter) = COMMON_FIRST
            .iter()
            .rev()
            .find(|&&letter| held[(letter - b'a') as usize])
        {
            keys[field as usize] = letter;
        }
    }
    keys
}

fn new_state(goto: &mut Vec<[u16; PATTERN_CLASSES]>, accept: &mut Vec<u16>) -> u16 {
    goto.push([NONE; PATTERN_CLASSES]);
    accept.push(0);
    // Checked against PATTERN_STATES after the trie is built; u16 holds far more.
    (goto.len() - 1).min(NONE as usize - 1) as u16
}

/// An empty table on the heap (it is 66 KiB: too big for some stacks).
pub fn boxed_empty() -> Box<PatternTable> {
    Box::new(PatternTable::EMPTY)
}

impl PatternTable {
    /// The first pattern (its number) that `value` of `field` matches, read
    /// as the XDP program reads it. For tests and `explain`.
    pub fn first_match(&self, field: PatternField, value: &[u8]) -> Option<u16> {
        let mut state = self.start[field as usize];
        if state == 0 {
            return None;
        }
        for &byte in value {
            state =
                self.next[(state as usize + self.class[byte as usize] as usize) / 2] & NEXT_STATE;
            let number = self.accept[(state / STATE_STRIDE) as usize];
            if number != 0 {
                return Some(number);
            }
        }
        None
    }
}

#[cfg(test)]
#[path = "sip_patterns_tests.rs"]
mod tests;
