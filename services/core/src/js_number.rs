//! Numbers exactly as the original system's JavaScript handled them.
//!
//! - [`write`]: the text `JSON.stringify` gives a number (`81`, not `81.0`;
//!   `1e+21`; `1e-7`; `null` for NaN and the infinities), so the files we
//!   write are byte for byte what the original wrote; [`JsonFormatter`] makes
//!   serde_json write every float that way.
//! - [`round`]: `Number(Math.round(value+'e'+decimals)+'e-'+decimals)`, the
//!   original's rounding: round half toward +infinity of the *shortest
//!   decimal text* of the double, not of the double itself (1.005 is a
//!   double slightly below 1.005 that prints as `1.005`: to 2 places it
//!   rounds to 1.01).
//!
//! Both rest on the shortest round-trip digits of a double, which
//! ECMAScript's Number::toString prescribes and Żmij (serde_json's float
//! writer) computes: shortest, and of those the closest. Checked against
//! Node on committed vectors (`tests/js_vectors.rs`) and against Ryū on
//! random doubles.

use std::io;

/// 10^0 ..= 10^22: every power of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// 2^53: every integer up to it is a double.
const EXACT_INTEGERS: u64 = 1 << 53;

/// The shortest decimal that reads back as a given positive double:
/// `0.d1 d2 … dk × 10^point` (ECMAScript's s, k and n).
struct Shortest {
    /// ASCII digits, no leading or trailing zero.
    digits: [u8; 24],
    len: usize,
    point: i32,
}

impl Shortest {
    /// `value` finite and non-zero; its sign is ignored.
    fn of(value: f64) -> Shortest {
        let mut buffer = zmij::Buffer::new();
        Shortest::read(buffer.format_finite(value).as_bytes())
    }

    /// Reads the shortest text of a number as Żmij or Ryū writes it
    /// (`12.34`, `1234000.0`, `0.001234`, `1.234e-7`, `1e+21`; its sign
    /// ignored).
    fn read(text: &[u8]) -> Shortest {
        let mut shortest = Shortest {
            digits: [0; 24],
            len: 0,
            point: 0,
        };
        let mut after_point = false;
        for (i, &byte) in text.iter().enumerate() {
            match byte {
                b'0'..=b'9' => {
                    if shortest.len == 0 && byte == b'0' {
                        // A leading zero: only moves the point after "0.".
                        if after_point {
                            shortest.point -= 1;
                        }
                        continue;
                    }
                    shortest.digits[shortest.len] = byte;
                    shortest.len += 1;
                    if !after_point {
                        shortest.point += 1;
                    }
                }
                b'.' => after_point = true,
                b'e' | b'E' => {
                    let exponent: i32 = std::str::from_utf8(&text[i + 1..])
                        .ok()
                        .and_then(|e| e.parse().ok())
                        .expect("a decimal exponent");
                    shortest.point += exponent;
                    break;
                }
                _ => {}
            }
        }
        while shortest.len > 1 && shortest.digits[shortest.len - 1] == b'0' {
            shortest.len -= 1;
        }
        shortest
    }

    fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
    }

    /// The digits as an integer (at most 17 of them: fits).
    fn mantissa(&self) -> u64 {
        self.digits()
            .iter()
            .fold(0, |m, d| m * 10 + u64::from(d - b'0'))
    }

    /// Whether Number::toString writes it with an exponent (`1e+21`, `1e-7`).
    fn needs_exponent(&self) -> bool {
        self.point > 21 || self.point <= -6
    }
}

/// Room for the longest text [`write`] produces (`-1.2345678901234567e-308`
/// or `-0.0000012345678901234567` or 21 integer digits).
const TEXT_CAPACITY: usize = 32;

/// A number's JavaScript text, on the stack.
struct Text {
    bytes: [u8; TEXT_CAPACITY],
    len: usize,
}

impl Text {
    fn new() -> Text {
        Text {
            bytes: [0; TEXT_CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `n` in decimal digits.
    fn push_decimal(&mut self, n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.extend(&digits[at..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Number::toString(10) of the number Żmij `printed` with an exponent.
    fn laid_out(printed: &[u8], negative: bool) -> Text {
        let mut text = Text::new();
        if negative {
            text.push(b'-');
        }
        let shortest = Shortest::read(printed);
        let (digits, n) = (shortest.digits(), shortest.point);
        let k = digits.len() as i32;
        if k <= n && n <= 21 {
            text.extend(digits);
            for _ in k..n {
                text.push(b'0');
            }
        } else if 0 < n && n <= 21 {
            let (int, frac) = digits.split_at(n as usize);
            text.extend(int);
            text.push(b'.');
            text.extend(frac);
        } else if -6 < n && n <= 0 {
            text.extend(b"0.");
            for _ in n..0 {
                text.push(b'0');
            }
            text.extend(digits);
        } else {
            text.push(digits[0]);
            if k > 1 {
                text.push(b'.');
                text.extend(&digits[1..]);
            }
            text.push(b'e');
            let exponent = n - 1;
            text.push(if exponent < 0 { b'-' } else { b'+' });
            text.push_decimal(u64::from(exponent.unsigned_abs()));
        }
        text
    }
}

/// Hands ECMAScript Number::toString(10) of a finite `value` to `f`.
fn with_text<R>(value: f64, f: impl FnOnce(&[u8]) -> R) -> R {
    if value == 0.0 {
        // Also -0.
        return f(b"0");
    }
    let mut buffer = zmij::Buffer::new();
    let printed = buffer.format_finite(value).as_bytes();
    if printed.contains(&b'e') {
        f(Text::laid_out(printed, value < 0.0).as_bytes())
    } else {
        // Żmij writes without an exponent from 1e-5 to below 1e17, where
        // JavaScript does too, with the same digits; but whole numbers end
        // in ".0" there.
        f(printed.strip_suffix(b".0").unwrap_or(printed))
    }
}

/// Appends `value` as `JSON.stringify` writes it: Number::toString for a
/// finite number (`81`, `81.5`, `0.000001`, `1e-7`, `1e+21`, `-0` as `0`),
/// `null` for NaN and the infinities.
pub fn write(value: f64, out: &mut Vec<u8>) {
    if value.is_finite() {
        with_text(value, |text| out.extend_from_slice(text));
    } else {
        out.extend_from_slice(b"null");
    }
}

/// `String(value)` in JavaScript: as [`write`], but `NaN`, `Infinity` and
/// `-Infinity` for the non-finite.
#[must_use]
pub fn to_string(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        with_text(value, |text| String::from_utf8(text.to_vec())).expect("number texts are ASCII")
    }
}

/// A serde_json formatter that writes floats as `JSON.stringify` does (see
/// [`write`]); everything else as serde_json's compact formatter.
///
/// ```
/// use serde::Serialize as _;
/// let mut out = Vec::new();
/// let mut serializer =
///     serde_json::Serializer::with_formatter(&mut out, alleycat_core::js_number::JsonFormatter);
/// [81.0, 0.5, 1e21].serialize(&mut serializer).unwrap();
/// assert_eq!(out, b"[81,0.5,1e+21]");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormatter;

impl serde_json::ser::Formatter for JsonFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // serde_json sends NaN and the infinities to `write_null`.
        with_text(value, |text| writer.write_all(text))
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }
}

/// `Number(Math.round(value+'e'+decimals)+'e-'+decimals)`, bit for bit: the
/// original system's rounding to `decimals` places.
///
/// JavaScript does it on text: the shortest decimal text of `value` with
/// the exponent shifted, parsed (correctly rounded), rounded half toward
/// +infinity (`Math.round`), then the text of that integer shifted back and
/// parsed. So it rounds the decimal the double *prints as*: 1.005 (a
/// double slightly below it) gives 1.01 to 2 places. Where the text already has an
/// exponent (below 1e-6, from 1e21) the concatenation is not a number and
/// the result is NaN, as in JavaScript; non-finite values give NaN too.
///
/// Fast: when `value × 10^decimals` is clearly away from a half, the text
/// detour cannot change the result, and plain arithmetic gives it.
#[must_use]
#[inline]
pub fn round(value: f64, decimals: u8) -> f64 {
    round_fast(value, decimals).unwrap_or_else(|| round_exact(value, decimals))
}

/// [`round`] by arithmetic, or `None` when it could differ from the text
/// route: `value` too small, too large, negative, or just below a tie
/// without printing as it.
#[inline]
fn round_fast(value: f64, decimals: u8) -> Option<f64> {
    let scale = *POW10.get(usize::from(decimals))?;
    let tie_scale = *POW10.get(usize::from(decimals) + 1)?;
    // Printed without an exponent (else JavaScript gives NaN), positive.
    if !(1e-6..1e21).contains(&value) {
        return None;
    }
    let shifted = value * scale;
    // Below 2^43, the margin below is under 1 and the ties are short.
    if shifted >= (1u64 << 43) as f64 {
        return None;
    }
    // JavaScript's shifted value parses the shortest text of `value`
    // (within half an ulp of it) times 10^decimals (rounded once more):
    // within 3 ulps of `shifted`, far less than the margin of 512 ulps.
    // Outside the margin of the half, both round to the same integer.
    // Positive and below 2^43: truncation is the floor (and cheaper than
    // `floor()`, a libm call without SSE4.1).
    let floor = (shifted as i64) as f64;
    let fraction = shifted - floor;
    let up = if (fraction - 0.5).abs() > shifted * f64::EPSILON * 512.0 {
        fraction > 0.5
    } else {
        // Near the tie T = (floor + 1/2) / 10^decimals, a decimal of at
        // most 14 significant digits (shifted < 2^43), so the double
        // nearest it prints as T itself (DBL_DIG is 15). If that double is
        // `value`, JavaScript shifts the text of T: exactly floor + 1/2,
        // which Math.round takes up. If T is below `value`, so is the text
        // of `value`, and its shift (rounded) is not below floor + 1/2: up
        // too. Below T, the shifted text may still round onto floor + 1/2:
        // only the text route tells.
        let tie = ((2.0 * floor + 1.0) * 5.0) / tie_scale;
        if tie <= value {
            true
        } else {
            return None;
        }
    };
    let integer = if up { floor + 1.0 } else { floor };
    // An integer below 2^53 prints as its exact digits; parsing them with
    // the exponent lowered is one correctly rounded division.
    Some(integer / scale)
}

/// [`round`] following the text route step by step, with exact decimal
/// arithmetic instead of strings.
#[inline(never)]
fn round_exact(value: f64, decimals: u8) -> f64 {
    if !value.is_finite() {
        return f64::NAN;
    }
    if value == 0.0 {
        // "0e4" -> 0 -> "0e-4" -> 0 (also for -0).
        return 0.0;
    }
    let shortest = Shortest::of(value);
    if shortest.needs_exponent() {
        // "1e+21e4", "1e-7e4": not a number.
        return f64::NAN;
    }
    let sign = if value < 0.0 { -1.0 } else { 1.0 };
    let shifted = sign
        * parse_decimal(
            shortest.mantissa(),
            shortest.point - shortest.len as i32 + i32::from(decimals),
        );
    let integer = math_round(shifted);
    if integer == 0.0 {
        // -0 prints as "0".
        return 0.0;
    }
    if !integer.is_finite() {
        return f64::NAN;
    }
    if integer.abs() < EXACT_INTEGERS as f64 {
        // Prints as its exact digits.
        return sign * parse_decimal(integer.abs() as u64, -i32::from(decimals));
    }
    let printed = Shortest::of(integer);
    if printed.needs_exponent() {
        return f64::NAN;
    }
    sign * parse_decimal(
        printed.mantissa(),
        printed.point - printed.len as i32 - i32::from(decimals),
    )
}

/// `Math.round`: the closest integer, halves toward +infinity.
fn math_round(x: f64) -> f64 {
    let floor = x.floor();
    // Exact: a double minus its floor is representable.
    if x - floor >= 0.5 { floor + 1.0 } else { floor }
}

/// The double closest to `mantissa × 10^exponent` (ties to even), as
/// JavaScript's (and Rust's) number parsing gives it.
fn parse_decimal(mantissa: u64, exponent: i32) -> f64 {
    if mantissa <= EXACT_INTEGERS
        && let Some(&scale) = POW10.get(exponent.unsigned_abs() as usize)
    {
        // Both operands exact: one correctly rounded operation.
        let m = mantissa as f64;
        return if exponent >= 0 { m * scale } else { m / scale };
    }
    // Rust's parsing is correctly rounded too; the text stays on the stack.
    let mut text = Text::new();
    text.push_decimal(mantissa);
    text.push(b'e');
    if exponent < 0 {
        text.push(b'-');
    }
    text.push_decimal(u64::from(exponent.unsigned_abs()));
    std::str::from_utf8(text.as_bytes())
        .ok()
        .and_then(|t| t.parse().ok())
        .expect("digits and an exponent parse")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json(value: f64) -> String {
        let mut out = Vec::new();
        write(value, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// JavaScript's `Number(text)` for the texts the rounding builds: NaN
    /// for anything that is not a decimal literal.
    fn js_parse(text: &str) -> f64 {
        let literal = text
            .strip_prefix('-')
            .unwrap_or(text)
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.e".contains(&b));
        if literal {
            text.parse().unwrap_or(f64::NAN)
        } else {
            f64::NAN
        }
    }

    /// The original expression, literally, on strings.
    fn reference_round(value: f64, decimals: u8) -> f64 {
        let shifted = js_parse(&format!("{}e{decimals}", to_string(value)));
        let integer = if shifted.is_finite() {
            math_round(shifted)
        } else {
            shifted
        };
        js_parse(&format!("{}e-{decimals}", to_string(integer)))
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn writes_numbers_as_json_stringify() {
        for (value, text) in [
            (0.0, "0"),
            (-0.0, "0"),
            (81.0, "81"),
            (81.5, "81.5"),
            (-81.5, "-81.5"),
            (165.3838, "165.3838"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (123e20, "1.23e+22"),
            (999_999_999_999_999_900_000.0, "999999999999999900000"),
            (2f64.powi(60), "1152921504606847000"),
            (1e-6, "0.000001"),
            (1.5e-6, "0.0000015"),
            (1e-7, "1e-7"),
            (-1.25e-7, "-1.25e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
        ] {
            assert_eq!(json(value), text, "{value:e}");
        }
        assert_eq!(to_string(f64::NAN), "NaN");
        assert_eq!(to_string(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(to_string(1e21), "1e+21");
    }

    #[test]
    fn the_formatter_writes_floats_as_javascript() {
        use serde::Serialize as _;
        let mut out = Vec::new();
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, JsonFormatter);
        serde_json::json!({"a": 81.0, "b": [1e21, 0.5, f64::NAN], "c": 3, "d": "x"})
            .serialize(&mut serializer)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":81,"b":[1e+21,0.5,null],"c":3,"d":"x"}"#
        );
    }

    #[test]
    fn rounds_as_the_original() {
        // The shortest text of the double nearest 83.53785 is "83.53785":
        // JavaScript rounds that text up; rounding the double would go down.
        assert_eq!(round(83.53785, 4), 83.5379);
        assert_eq!(round(((30.01 + 35.0) * (63.5 + 65.0)) / 100.0, 4), 83.5378);
        assert_eq!(round(165.38375, 4), 165.3838);
        assert_eq!(round(1.005, 2), 1.01, "the text, not the double below it");
        assert_eq!(round(-2.5, 0), -2.0, "halves toward +infinity");
        assert_eq!(round(2.5, 0), 3.0);
        assert!(round(1e21, 4).is_nan(), "\"1e+21e4\" is not a number");
        assert!(round(1e-7, 4).is_nan());
        assert!(round(f64::NAN, 4).is_nan());
        assert!(round(f64::INFINITY, 4).is_nan());
        assert_eq!(round(0.000001, 4).to_bits(), 0f64.to_bits());
        assert_eq!(
            round(-0.00001, 4).to_bits(),
            0f64.to_bits(),
            "-0 prints as 0"
        );
        assert_eq!(round(-0.0, 4).to_bits(), 0f64.to_bits());
        // 2^53 - 1 shifted is past 2^53: its integer prints rounded.
        assert_eq!(round(9_007_199_254_740_991.0, 4), 9_007_199_254_740_990.0);
        for decimals in 0..=30 {
            assert!(same(
                round(123.456_789, decimals),
                reference_round(123.456_789, decimals)
            ));
        }
    }

    proptest! {
        #[test]
        fn round_is_the_expression_on_strings(
            bits in any::<u64>(),
            cadence in 0u32..=100_000,
            resistance in 0u32..=10_000,
            decimals in 0u8..=8,
        ) {
            let value = f64::from_bits(bits);
            prop_assert!(same(round(value, decimals), reference_round(value, decimals)), "{value:e}");
            // The output formula: literally the original's expression.
            let (c, r) = (f64::from(cadence) / 100.0, f64::from(resistance) / 10.0);
            let value = ((c + 35.0) * (r + 65.0)) / 100.0;
            prop_assert!(same(crate::output(c, r), reference_round(value, 4)), "{value}");
            let short = f64::from(cadence) / 10f64.powi(i32::from(decimals));
            prop_assert!(same(round(short, 4), reference_round(short, 4)), "{short}");
        }

        #[test]
        fn the_shortest_digits_are_ryus(bits in any::<u64>(), short in 0u64..100_000_000, scale in 0i32..12) {
            // Ryū is proven to give the shortest digits, and of those the
            // closest: Żmij must agree, on any double and on short decimals.
            for value in [f64::from_bits(bits), short as f64 / 10f64.powi(scale)] {
                if value.is_finite() && value != 0.0 {
                    let mut ryu = ryu::Buffer::new();
                    let theirs = Shortest::read(ryu.format_finite(value).as_bytes());
                    let ours = Shortest::of(value);
                    prop_assert_eq!(
                        (ours.digits(), ours.point),
                        (theirs.digits(), theirs.point),
                        "{:e}", value
                    );
                }
            }
        }

        #[test]
        fn written_text_reads_back_as_the_same_double(bits in any::<u64>()) {
            let value = f64::from_bits(bits);
            let text = json(value);
            if value.is_finite() {
                prop_assert_eq!(text.parse::<f64>().unwrap(), value);
                prop_assert!(!text.ends_with(".0"));
            } else {
                prop_assert_eq!(text, "null");
            }
        }
    }
}
