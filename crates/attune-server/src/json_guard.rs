//! What serde_json would accept but not keep: an integer no 64-bit integer holds (it silently
//! becomes an imprecise float, so the value stored would not be the value sent). Such a body is
//! refused with the path of the number; everything else about JSON is serde's to judge.

/// The path (`parameters.ids.3`) of the first integer in `body` that is outside the 64-bit range,
/// or `None`. A body that is not JSON at all yields `None` (serde says what is wrong with it).
pub(crate) fn huge_integer(body: &[u8]) -> Option<String> {
    if !has_long_digit_run(body) {
        return None; // the usual case: one pass, no allocation
    }
    let mut w = Walk { b: body, i: 0, path: Vec::new() };
    match w.value() {
        Err(Stop::Found(path)) => Some(path),
        _ => None,
    }
}

/// Whether a run of 19 or more digits occurs outside a string (i64's largest has 19 digits).
fn has_long_digit_run(b: &[u8]) -> bool {
    let (mut in_string, mut escaped, mut run) = (false, false, 0);
    for &c in b {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                run = 0;
            }
            b'0'..=b'9' => {
                run += 1;
                if run >= 19 {
                    return true;
                }
            }
            _ => run = 0,
        }
    }
    false
}

enum Stop {
    Found(String),
    Malformed,
}

struct Walk<'a> {
    b: &'a [u8],
    i: usize,
    path: Vec<String>,
}

impl Walk<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), Stop> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Stop::Malformed)
        }
    }

    fn value(&mut self) -> Result<(), Stop> {
        if self.path.len() > 128 {
            return Err(Stop::Malformed); // deeper than serde_json goes
        }
        match self.peek().ok_or(Stop::Malformed)? {
            b'{' => {
                self.i += 1;
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    let key = self.string()?;
                    self.expect(b':')?;
                    self.path.push(key);
                    self.value()?;
                    self.path.pop();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Stop::Malformed),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                let mut n = 0;
                loop {
                    self.path.push(n.to_string());
                    self.value()?;
                    self.path.pop();
                    n += 1;
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Stop::Malformed),
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            b'-' | b'0'..=b'9' => self.number(),
            _ => {
                // true, false, null
                while self.i < self.b.len() && self.b[self.i].is_ascii_alphabetic() {
                    self.i += 1;
                }
                Ok(())
            }
        }
    }

    /// A string's raw text (escapes left as they are: enough to name a key).
    fn string(&mut self) -> Result<String, Stop> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        while let Some(&c) = self.b.get(self.i) {
            self.i += 1;
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => return Ok(String::from_utf8_lossy(&self.b[start..self.i - 1]).into_owned()),
                _ => {}
            }
        }
        Err(Stop::Malformed)
    }

    fn number(&mut self) -> Result<(), Stop> {
        let start = self.i;
        let mut integer = true;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => {}
                b'.' | b'e' | b'E' => integer = false,
                _ => break,
            }
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| Stop::Malformed)?;
        if integer && text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
            let path = if self.path.is_empty() { "the body".to_owned() } else { self.path.join(".") };
            return Err(Stop::Found(path));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::huge_integer;

    #[test]
    fn finds_integers_beyond_64_bits_by_path() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"a": 1, "b": [1, 2]}"#, None),
            (r#"{"n": 18446744073709551615, "m": -9223372036854775808}"#, None),
            (r#"{"parameters": {"ids": [1, 2, 18446744073709551616]}}"#, Some("parameters.ids.2")),
            (r#"{"x": -9223372036854775809}"#, Some("x")),
            (r#"{"s": "12345678901234567890123", "f": 1234567890123456789012.5}"#, None),
            (r#"{"e": 1e400}"#, None),
            ("123456789012345678901234", Some("the body")),
            (r#"{"a": 12345678901234567890123"#, Some("a")),
            (r#"{"a\"b": {"c": 99999999999999999999}}"#, Some(r#"a\"b.c"#)),
        ];
        for (body, expected) in cases {
            assert_eq!(huge_integer(body.as_bytes()).as_deref(), *expected, "{body}");
        }
    }
}
