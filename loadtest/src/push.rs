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

/// The parts of a push the harness measures with.
#[derive(Debug, PartialEq)]
pub struct Push<'a> {
    /// `raceId`.
    pub race_id: u64,
    /// `second`: the race's latest second.
    pub second: u16,
    /// The raw `hereNow` array.
    here_now: &'a str,
    /// `ghost` is there and not null.
    pub ghost: bool,
    /// `following` is there and not null.
    pub following: bool,
}

impl<'a> Push<'a> {
    /// Reads a push; `None` if it is not a JSON object with a numeric
    /// `raceId` and `second` and a `hereNow` array.
    pub fn read(text: &'a str) -> Option<Push<'a>> {
        let (mut race_id, mut second, mut here_now) = (None, None, None);
        let (mut ghost, mut following) = (false, false);
        let mut scan = Scan::new(text);
        scan.object(|key, value| {
            match key {
                "raceId" => race_id = Some(value.parse().ok()?),
                "second" => second = Some(value.parse().ok()?),
                "hereNow" => here_now = Some(value).filter(|v| v.starts_with('[')),
                "ghost" => ghost = value != "null",
                "following" => following = value != "null",
                _ => {}
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

    /// The `racerId` of every entry of `hereNow`, in order; `None` if an
    /// entry is not an object with a numeric `racerId`.
    pub fn here_now_racers(&self) -> Option<Vec<u64>> {
        let mut racers = Vec::new();
        Scan::new(self.here_now).array(|entry| {
            let mut racer = None;
            Scan::new(entry).object(|key, value| {
                if key == "racerId" {
                    racer = Some(value.parse().ok()?);
                }
                Some(())
            })?;
            racers.push(racer?);
            Some(())
        })?;
        Some(racers)
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
        let bytes = self.text.as_bytes();
        loop {
            let offset = bytes
                .get(self.at..)?
                .iter()
                .position(|&b| b == b'"' || b == b'\\')?;
            self.at += offset;
            if bytes[self.at] == b'\\' {
                self.at += 2; // the escaped character cannot end the string
                continue;
            }
            self.at += 1;
            return self.text.get(start..self.at - 1);
        }
    }

    /// The raw text of the next value, whatever it is.
    fn value(&mut self) -> Option<&'a str> {
        self.skip_space();
        let start = self.at;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                    self.at += 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            _ => {
                let rest = &self.text.as_bytes()[self.at..];
                let len = rest
                    .iter()
                    .position(|b| b",}] \t\n\r".contains(b))
                    .unwrap_or(rest.len());
                if len == 0 {
                    return None;
                }
                self.at += len;
            }
        }
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

    /// Calls `each` with the key and raw value of every member of the
    /// object at the cursor.
    fn object(&mut self, mut each: impl FnMut(&'a str, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        let mut more = !self.closes(b'}')?;
        while more {
            let key = self.string()?;
            self.expect(b':')?;
            each(key, self.value()?)?;
            more = self.more(b'}')?;
        }
        Some(())
    }

    /// Calls `each` with the raw text of every element of the array at
    /// the cursor.
    fn array(&mut self, mut each: impl FnMut(&'a str) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        let mut more = !self.closes(b']')?;
        while more {
            each(self.value()?)?;
            more = self.more(b']')?;
        }
        Some(())
    }
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
        let racers = push.here_now_racers()?;
        Some((
            push.race_id,
            push.second,
            racers,
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
            text.push_str(r#","following":[{"rank":1,"followingRank":1,"racerId":5,"name":"x","output":2.0}]"#);
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

    proptest! {
        #[test]
        fn any_names_read_as_deserializing_would(
            names in proptest::collection::vec(any::<String>(), 0..6),
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
