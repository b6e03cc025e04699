//! The output (power) formula, computed here once and used everywhere.

/// Decimal places every stored and published output is rounded to, as the
/// original real-time functions did.
pub const OUTPUT_DECIMALS: u8 = 4;

/// A racer's output (power) for one second, exactly as the original's
/// JavaScript computed it:
/// `Number(Math.round(value+'e'+4)+'e-'+4)` of
/// `value = ((cadence + 35) * (resistance + 65)) / 100` in doubles (see
/// [`js_number::round`](crate::js_number::round): it rounds the shortest
/// decimal text of `value`, so 30.01 and 63.5 give 83.5378, as `value`
/// prints as 83.53784999999999, although the exact product is a tie).
///
/// Inputs are validated telemetry values (finite, 0..=1000), so the result is
/// always finite and non-negative.
#[must_use]
#[inline]
pub fn output(cadence: f64, resistance: f64) -> f64 {
    crate::js_number::round(
        ((cadence + 35.0) * (resistance + 65.0)) / 100.0,
        OUTPUT_DECIMALS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_formula() {
        // (80.25 + 35) * (78.5 + 65) / 100 = 115.25 * 143.5 / 100 = 165.38375
        assert_eq!(output(80.25, 78.5), 165.3838);
        assert_eq!(output(0.0, 0.0), 22.75);
        assert_eq!(output(30.0, 33.0), 63.7);
        // The example: the value prints as 83.53784999999999, so
        // JavaScript rounds it down, though the exact product is a tie.
        assert_eq!(output(30.01, 63.5), 83.5378);
    }

    #[test]
    fn rounds_to_four_decimals() {
        // 1/3 + 35 = 35.333.., * 65 / 100 = 22.966666..
        assert_eq!(output(1.0 / 3.0, 0.0), 22.9667);
        let value = output(47.123_456, 51.987_654);
        assert_eq!(value, (value * 10_000.0).round() / 10_000.0);
    }

    #[test]
    fn is_monotonic_in_both_inputs() {
        assert!(output(50.0, 50.0) < output(50.1, 50.0));
        assert!(output(50.0, 50.0) < output(50.0, 50.1));
    }
}
