//! Token bytes to text: a token may end in the middle of a UTF-8 character (byte-level
//! vocabularies split emoji and CJK characters over several tokens), so the bytes of
//! an unfinished character are held back until the token that completes it.

/// Turns a stream of token pieces (bytes) into text, never splitting a character.
#[derive(Debug, Default)]
pub struct Utf8Pieces {
    held: Vec<u8>,
}

impl Utf8Pieces {
    /// The text that `bytes` completes; bytes of an unfinished character stay held.
    /// Bytes that can never be valid UTF-8 become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.held;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked valid"));
                    match e.error_len() {
                        // An unfinished character at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        self.held.drain(..self.held.len() - keep);
        out
    }

    /// What is still held, as text (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_split_character() {
        let mut d = Utf8Pieces::default();
        let snowman = "☃".as_bytes(); // three bytes
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&snowman[..1]), "");
        assert_eq!(d.push(&snowman[1..2]), "");
        assert_eq!(d.push(&[snowman[2], b'b']), "☃b");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Pieces::default();
        assert_eq!(d.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
        assert_eq!(d.push(&[0xe2, 0x98]), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
