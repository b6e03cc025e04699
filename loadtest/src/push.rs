//! What a viewer reads of a ranking push: its race and second, the racers
//! of `hereNow`, and whether it holds `ghost` and `following`.
//!
//! Read by a structural scan (strings, escapes and nesting, nothing
//! decoded) instead of deserializing the message: at 10,000 viewers,
//! `serde_json` walking every push (its `allTime` and every field of every
//! entry, about 6 KB a push, 30,000 pushes a second) was 58% of the
//! harness's CPU (perf, 6 s mid-run of the stretch run), CPU the server
//! under test shares. Members are found by key whatever their order.
//! Malformed JSON is refused as far as the scan sees it: unbalanced
//! strings, brackets or separators; a scalar is only checked where it is
//! read (the ids and the second).
//!
//! The scan itself was then still 27% of the whole machine's CPU in the
//! stretch run (`perf record -a`, 8 s mid-run), more than any part of the
//! server. So it reads a push in one pass (`hereNow`'s entries as it meets
//! them, not stepped over and then read again) and steps over what it does
//! not read 64 bytes at a time (`nested_end`): 21.4 µs to 8.3 µs a push
//! of the stretch run's size (`cargo bench -p alleycat-loadtest --bench
//! read_push`, medians of 3 alternating runs).

/// The parts of a push the harness measures with.
#[derive(Debug, PartialEq)]
pub struct Push {
    /// `raceId`.
    pub race_id: u64,
    /// `second`: the race's latest second.
    pub second: u16,
    /// The `racerId` of every entry of `hereNow`, in order.
    pub here_now: Vec<u64>,
    /// `ghost` is there and not null.
    pub ghost: bool,
    /// `following` is there and not null.
    pub following: bool,
}

impl Push {
    /// Reads a push in one pass; `None` if it is not a JSON object with a
    /// numeric `raceId` and `second` and a `hereNow` array of objects with
    /// a numeric `racerId`.
    pub fn read(text: &str) -> Option<Push> {
        let (mut race_id, mut second, mut here_now) = (None, None, None);
        let (mut ghost, mut following) = (false, false);
        let mut scan = Scan::new(text);
        scan.object(|key, scan| {
            match key {
                "raceId" => race_id = Some(scan.value()?.parse().ok()?),
                "second" => second = Some(scan.value()?.parse().ok()?),
                "hereNow" => here_now = Some(scan.racer_ids()?),
                "ghost" => ghost = scan.value()? != "null",
                "following" => following = scan.value()? != "null",
                _ => {
                    scan.value()?;
                }
            }
            Some(())
        })?;
        scan.end()?;
        Some(Push {
            race_id: race_id?,
            second: second?,
            here_now: here_now?,
            ghost,
            following,
        })
    }
}

/// A cursor over JSON text that finds where values begin and end.
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Scan<'a> {
        Scan { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.skip_space();
        (self.at == self.text.len()).then_some(())
    }

    /// A string's raw contents (escapes left as they are).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        self.at = string_end(self.text.as_bytes(), start)?;
        self.text.get(start..self.at - 1)
    }

    /// The raw text of the next value, whatever it is.
    fn value(&mut self) -> Option<&'a str> {
        self.skip_space();
        let start = self.at;
        let bytes = self.text.as_bytes();
        self.at = match BYTE_CLASS[usize::from(*bytes.get(start)?)] {
            QUOTE => string_end(bytes, start + 1)?,
            OPEN => nested_end(bytes, start)?,
            _ => {
                let len = bytes[start..]
                    .iter()
                    .position(|&b| BYTE_CLASS[usize::from(b)] >= ENDS_SCALAR)
                    .unwrap_or(bytes.len() - start);
                if len == 0 {
                    return None;
                }
                start + len
            }
        };
        self.text.get(start..self.at)
    }

    /// Steps over `close` if it comes next; whether it did.
    fn closes(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let closes = self.peek()? == close;
        if closes {
            self.at += 1;
        }
        Some(closes)
    }

    /// After a member or an element: steps over `,` (more follow) or
    /// `close` (none do).
    fn more(&mut self, close: u8) -> Option<bool> {
        if self.closes(close)? {
            return Some(false);
        }
        self.expect(b',')?;
        Some(true)
    }

    /// Calls `each` with the key of every member of the object at the
    /// cursor, and the scan at its value, which `each` steps over.
    fn object(&mut self, mut each: impl FnMut(&'a str, &mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        let mut more = !self.closes(b'}')?;
        while more {
            let key = self.string()?;
            self.expect(b':')?;
            each(key, self)?;
            more = self.more(b'}')?;
        }
        Some(())
    }

    /// The `racerId` of every entry of the array at the cursor; `None` if
    /// an entry is not an object with a numeric `racerId`.
    fn racer_ids(&mut self) -> Option<Vec<u64>> {
        let mut racers = Vec::new();
        self.expect(b'[')?;
        let mut more = !self.closes(b']')?;
        while more {
            let mut racer = None;
            self.object(|key, scan| {
                let value = scan.value()?;
                if key == "racerId" {
                    racer = Some(value.parse().ok()?);
                }
                Some(())
            })?;
            racers.push(racer?);
            more = self.more(b']')?;
        }
        Some(racers)
    }
}

// What a byte means to the scan.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
const OPEN: u8 = 3;
/// From here on, the byte ends a number or literal.
const CLOSE: u8 = 4;
const ENDS_SCALAR: u8 = CLOSE;
const SEPARATOR: u8 = 5;

/// The class of every byte, for the byte-at-a-time scans (strings,
/// scalars, and what `nested_end` leaves to them): one load and one compare
/// a byte rather than matching each byte against several.
static BYTE_CLASS: [u8; 256] = {
    let mut class = [PLAIN; 256];
    class[b'"' as usize] = QUOTE;
    class[b'\\' as usize] = BACKSLASH;
    class[b'{' as usize] = OPEN;
    class[b'[' as usize] = OPEN;
    class[b'}' as usize] = CLOSE;
    class[b']' as usize] = CLOSE;
    class[b',' as usize] = SEPARATOR;
    class[b' ' as usize] = SEPARATOR;
    class[b'\t' as usize] = SEPARATOR;
    class[b'\n' as usize] = SEPARATOR;
    class[b'\r' as usize] = SEPARATOR;
    class
};

/// Just past the closing quote of the string whose contents start at
/// `at`; `None` if it does not close.
fn string_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        match BYTE_CLASS[usize::from(*bytes.get(at)?)] {
            QUOTE => return Some(at + 1),
            BACKSLASH => at += 2, // the escaped character cannot end the string
            _ => at += 1,
        }
    }
}

/// Just past the bracket that closes the object or array opening at `at`
/// (brackets within strings not counted); `None` if it does not close.
///
/// Most of a push is skipped here (`allTime`, and `hereNow` until its
/// entries are read), 64 bytes at a time: masks of its quotes and
/// brackets, which bytes are within strings from the running parity of
/// the quotes, and only the brackets outside strings looked at one by one.
/// A byte at a time, the end of every one of a push's hundreds of short
/// strings was a mispredicted branch. From the first block with a
/// backslash (an escape, rare in a name), the rest of the value is scanned
/// a byte at a time, as is a tail shorter than a block.
fn nested_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut depth = 0usize;
    // All ones while the block starts within a string.
    let mut in_string = 0u64;
    while let Some(block) = bytes.get(at..at + 64) {
        // A fold, not `contains`: without an early exit it compiles to
        // vector compares.
        if block.iter().fold(false, |any, &b| any | (b == b'\\')) {
            break;
        }
        let masks = Masks::of(block);
        let within = prefix_xor(masks.quotes) ^ in_string;
        let opens = masks.opens & !within;
        let closes = masks.closes & !within;
        let mut brackets = opens | closes;
        while brackets != 0 {
            let bit = brackets.trailing_zeros() as usize;
            if opens >> bit & 1 == 1 {
                depth += 1;
            } else {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + bit + 1);
                }
            }
            brackets &= brackets - 1;
        }
        in_string = 0u64.wrapping_sub(within >> 63);
        at += 64;
    }
    if in_string != 0 {
        at = string_end(bytes, at)?;
    }
    loop {
        match BYTE_CLASS[usize::from(*bytes.get(at)?)] {
            QUOTE => {
                at = string_end(bytes, at + 1)?;
                continue;
            }
            OPEN => depth += 1,
            CLOSE => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
        at += 1;
    }
}

/// Which of 64 bytes are quotes, and opening and closing brackets: bit i
/// for byte i. Computed eight bytes at a time in a `u64` (the crate has no
/// unsafe code, so no vector intrinsics).
struct Masks {
    quotes: u64,
    opens: u64,
    closes: u64,
}

impl Masks {
    fn of(block: &[u8]) -> Masks {
        let mut masks = Masks {
            quotes: 0,
            opens: 0,
            closes: 0,
        };
        for (i, word) in block.chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            let shift = 8 * i;
            masks.quotes |= equal_bytes(word, b'"') << shift;
            // `[` and `]` are `{` and `}` but for the 0x20 bit.
            let folded = word | (BROADCAST * 0x20);
            masks.opens |= equal_bytes(folded, b'{') << shift;
            masks.closes |= equal_bytes(folded, b'}') << shift;
        }
        masks
    }
}

/// 0x01 in every byte.
const BROADCAST: u64 = u64::from_le_bytes([1; 8]);

/// Bit i set if byte i of `word` is `byte`.
fn equal_bytes(word: u64, byte: u8) -> u64 {
    const LOW7: u64 = BROADCAST * 0x7f;
    let diff = word ^ (BROADCAST * u64::from(byte));
    // The high bit of each byte of `diff` that is zero, exactly (no borrow
    // from one byte into the next)...
    let zero = !(((diff & LOW7) + LOW7) | diff | LOW7);
    // ...gathered into the low 8 bits, byte 0 lowest.
    (zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Bit i is the parity of the set bits up to and including i: with the
/// quotes' mask, whether byte i is within a string (its opening quote
/// included, its closing quote not).
fn prefix_xor(mut bits: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        bits ^= bits << shift;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    /// What the harness deserialized before the scan: the reference.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Reference {
        race_id: u64,
        second: u16,
        here_now: Vec<Entry>,
        following: Option<serde::de::IgnoredAny>,
        ghost: Option<serde::de::IgnoredAny>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        racer_id: u64,
    }

    fn read(text: &str) -> Option<(u64, u16, Vec<u64>, bool, bool)> {
        let push = Push::read(text)?;
        Some((
            push.race_id,
            push.second,
            push.here_now,
            push.ghost,
            push.following,
        ))
    }

    fn reference(text: &str) -> Option<(u64, u16, Vec<u64>, bool, bool)> {
        let r: Reference = serde_json::from_str(text).ok()?;
        let racers = r.here_now.iter().map(|e| e.racer_id).collect();
        Some((
            r.race_id,
            r.second,
            racers,
            r.ghost.is_some(),
            r.following.is_some(),
        ))
    }

    /// A push as the server writes it, with `names` for its racers.
    fn push(names: &[String], ghost: bool, following: bool) -> String {
        let entry = |(n, name): (usize, &String)| {
            format!(
                r#"{{"rank":{},"racerId":{},"name":{},"output":12.5}}"#,
                n + 1,
                100 + n,
                serde_json::to_string(name).unwrap()
            )
        };
        let here_now: Vec<String> = names.iter().enumerate().map(entry).collect();
        let all_time: Vec<String> = (0..names.len())
            .map(|n| {
                format!(
                    r#"{{"racerId":{},"output":1e-3,"rank":{}}}"#,
                    900 + n,
                    n + 1
                )
            })
            .collect();
        let mut text = format!(
            r#"{{"type":"race","classId":3,"raceId":42,"second":17,"ts":1,"racers":{},"hereNow":[{}],"allTime":[{}]"#,
            names.len(),
            here_now.join(","),
            all_time.join(",")
        );
        if ghost {
            text.push_str(r#","ghost":{"racerId":7,"second":99,"output":1.0,"pb":null}"#);
        }
        if following {
            // Names here too, as the server writes them: this is a value
            // the scan steps over (`nested_end`), not one it reads.
            let entries: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    format!(
                        r#"{{"rank":{},"followingRank":{},"racerId":{},"name":{},"output":2.0}}"#,
                        n + 1,
                        n + 1,
                        500 + n,
                        serde_json::to_string(name).unwrap()
                    )
                })
                .collect();
            text.push_str(&format!(r#","following":[{}]"#, entries.join(",")));
        }
        text.push('}');
        text
    }

    #[test]
    fn a_server_push_is_read_as_deserializing_it_would() {
        let names = ["Ann".to_owned(), r#"Bo "racerId":1 ]}"#.to_owned()];
        for (ghost, following) in [(false, false), (true, false), (false, true), (true, true)] {
            let text = push(&names, ghost, following);
            assert_eq!(
                read(&text),
                Some((42, 17, vec![100, 101], ghost, following))
            );
            assert_eq!(read(&text), reference(&text));
        }
    }

    #[test]
    fn members_are_found_in_any_order_and_null_counts_as_absent() {
        let text = r#" { "hereNow" : [ { "name":"a" , "racerId" : 9 } ] , "ghost":null, "second":3,"raceId":8,"following":null } "#;
        assert_eq!(read(text), Some((8, 3, vec![9], false, false)));
        assert_eq!(read(text), reference(text));
    }

    #[test]
    fn malformed_pushes_are_refused() {
        let good = push(&["A".to_owned()], true, false);
        for bad in [
            "",
            "[]",
            r#"{"raceId":1,"second":2}"#,
            r#"{"raceId":1,"second":2,"hereNow":{}}"#,
            r#"{"raceId":"1","second":2,"hereNow":[]}"#,
            r#"{"raceId":1,"second":70000,"hereNow":[]}"#,
            r#"{"raceId":1,"second":2,"hereNow":[{"racerId":-1}]}"#,
            r#"{"raceId":1,"second":2,"hereNow":[{"name":"no id"}]}"#,
            r#"{"raceId":1,"second":2,"hereNow":[] "ghost":1}"#,
            r#"{"raceId":1,"second":2,"hereNow":[]}}"#,
            &good[..good.len() - 1],
            &good[..good.len() / 2],
        ] {
            assert_eq!(read(bad), None, "{bad}");
        }
    }

    /// What `nested_end` computes, a byte at a time: the scan as it was.
    fn nested_end_bytewise(bytes: &[u8], mut at: usize) -> Option<usize> {
        let mut depth = 0usize;
        loop {
            match *bytes.get(at)? {
                b'"' => {
                    at = string_end(bytes, at + 1)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(at + 1);
                    }
                }
                _ => {}
            }
            at += 1;
        }
    }

    proptest! {
        /// Any text after an opening bracket, from the bytes that matter
        /// (brackets, quotes, backslashes) and others: the 64-byte blocks
        /// find the same end as the byte-at-a-time scan, or none alike.
        #[test]
        fn blocks_end_a_value_where_bytes_do(
            body in proptest::collection::vec(
                prop::sample::select(b"[]{}\"\\ax,:;=".to_vec()), 0..400),
            opener in prop::sample::select(b"[{".to_vec()),
            lead in 0usize..70,
            escapes in any::<bool>(),
        ) {
            let mut text = vec![b' '; lead];
            text.push(opener);
            // Without backslashes, every whole block takes the fast path.
            text.extend(body.into_iter().filter(|&b| escapes || b != b'\\'));
            prop_assert_eq!(nested_end(&text, lead), nested_end_bytewise(&text, lead));
        }

        /// Any names, and long names of brackets, quotes and backslashes:
        /// strings that cross the 64-byte blocks `nested_end` reads, with
        /// escapes in some blocks, past the first, and not in others.
        #[test]
        fn any_names_read_as_deserializing_would(
            names in prop_oneof![
                proptest::collection::vec(any::<String>(), 0..6),
                proptest::collection::vec(
                    prop_oneof!["[a-z{}\\[\\] ]{0,140}", "[a-z{}\\[\\]\"\\\\ ]{0,140}"], 0..8),
            ],
            ghost in any::<bool>(),
            following in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let text = push(&names, ghost, following);
            let expected: Vec<u64> = (0..names.len() as u64).map(|n| 100 + n).collect();
            prop_assert_eq!(read(&text), Some((42, 17, expected, ghost, following)));
            prop_assert_eq!(read(&text), reference(&text));
            // Cut short anywhere, it is refused, as deserializing refuses it.
            let cut = cut.index(text.len());
            if let Some(short) = text.get(..cut) {
                prop_assert_eq!(read(short), None);
            }
        }
    }
}
