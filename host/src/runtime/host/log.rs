//! `kubelisten:listener/log`: guest log lines, tagged by the host and rate-limited per call.

use std::sync::Arc;

/// Severity of a guest log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected.
    Warn,
    /// A failure.
    Error,
}

/// Where guest log lines (the `log` import and captured stdout/stderr) go.
pub trait GuestLogSink: Send + Sync {
    /// One line from `listener` while handling `event_kind` for `object` (`namespace/name`).
    fn log(&self, listener: &str, object: &str, event_kind: &str, level: LogLevel, message: &str);

    /// Whether a line at `level` would be kept. Lines the sink would drop anyway (a `debug` line
    /// under an `info` filter) are not counted against a call's budget of lines, so a guest
    /// logging much detail does not lose its later errors. Every level, by default.
    fn enabled(&self, level: LogLevel) -> bool {
        let _ = level;
        true
    }
}

/// The default sink: a `tracing` event with the fields listener, object and event kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingSink;

impl GuestLogSink for TracingSink {
    fn log(&self, listener: &str, object: &str, event_kind: &str, level: LogLevel, message: &str) {
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(target: "kubelisten::guest", listener, object, event.kind = event_kind, "{message}")
            };
        }
        match level {
            LogLevel::Trace => emit!(trace),
            LogLevel::Debug => emit!(debug),
            LogLevel::Info => emit!(info),
            LogLevel::Warn => emit!(warn),
            LogLevel::Error => emit!(error),
        }
    }

    fn enabled(&self, level: LogLevel) -> bool {
        macro_rules! enabled {
            ($lvl:ident) => {
                tracing::enabled!(target: "kubelisten::guest", tracing::Level::$lvl)
            };
        }
        match level {
            LogLevel::Trace => enabled!(TRACE),
            LogLevel::Debug => enabled!(DEBUG),
            LogLevel::Info => enabled!(INFO),
            LogLevel::Warn => enabled!(WARN),
            LogLevel::Error => enabled!(ERROR),
        }
    }
}

/// Lines one call may log (import and stdio together) before the rest is dropped.
const MAX_LINES_PER_CALL: u32 = 100;
/// Longest logged message, in bytes; longer ones are cut.
pub(crate) const MAX_LINE_BYTES: usize = 4096;

/// Per-call log budget: rate limit and size cap for one call.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    lines: u32,
    dropped: u32,
}

/// Everything the log import needs for the current call.
pub(crate) struct CallLog {
    pub(crate) sink: Arc<dyn GuestLogSink>,
    pub(crate) listener: Arc<str>,
    pub(crate) object: Arc<str>,
    pub(crate) event_kind: &'static str,
    pub(crate) budget: LogBudget,
}

impl CallLog {
    /// Logs one guest line within the call's budget.
    pub(crate) fn line(&mut self, level: LogLevel, message: &str) {
        if !self.sink.enabled(level) {
            return;
        }
        if self.budget.lines >= MAX_LINES_PER_CALL {
            self.budget.dropped += 1;
            return;
        }
        self.budget.lines += 1;
        let message = one_line(message);
        self.sink.log(
            &self.listener,
            &self.object,
            self.event_kind,
            level,
            truncate(&message, MAX_LINE_BYTES),
        );
    }

    /// Reports lines dropped by the rate limit and resets the budget for the next call.
    pub(crate) fn finish_call(&mut self) {
        let dropped = std::mem::take(&mut self.budget).dropped;
        if dropped > 0 {
            let note = format!(
                "{dropped} more guest log lines dropped (limit {MAX_LINES_PER_CALL} per call)"
            );
            self.sink.log(
                &self.listener,
                &self.object,
                self.event_kind,
                LogLevel::Warn,
                &note,
            );
        }
    }
}

/// `message` on one line: control characters (a newline, a carriage return, an escape), line
/// and paragraph separators and bidirectional overrides are written as escapes (`\n`, `\r`,
/// `\u{1b}`, `\u{2028}`, `\u{202e}`), so a guest cannot forge host log lines (the text log
/// format writes messages as they are) or garble a terminal. Tabs stay. (Cut to the line limit
/// after escaping.)
fn one_line(message: &str) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    // Only what a line can hold is looked at (an escape takes at most 10 bytes).
    let message = truncate(message, MAX_LINE_BYTES);
    if !message.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl GuestLogSink for Lines {
        fn log(&self, _: &str, _: &str, _: &str, _: LogLevel, message: &str) {
            self.0.lock().unwrap().push(message.into());
        }
    }

    /// A call's log into `sink`.
    fn call_log(sink: Arc<dyn GuestLogSink>) -> CallLog {
        CallLog {
            sink,
            listener: Arc::from("l"),
            object: Arc::from("ns/a"),
            event_kind: "create",
            budget: LogBudget::default(),
        }
    }

    /// Keeps `info` and above, as the default filter does.
    #[derive(Default)]
    struct InfoAndAbove(Lines);

    impl GuestLogSink for InfoAndAbove {
        fn log(&self, l: &str, o: &str, k: &str, level: LogLevel, message: &str) {
            self.0.log(l, o, k, level, message);
        }
        fn enabled(&self, level: LogLevel) -> bool {
            !matches!(level, LogLevel::Trace | LogLevel::Debug)
        }
    }

    #[test]
    fn lines_the_sink_drops_do_not_use_up_the_budget() {
        let sink = Arc::new(InfoAndAbove::default());
        let mut log = call_log(sink.clone());
        for _ in 0..2 * MAX_LINES_PER_CALL {
            log.line(LogLevel::Debug, "detail");
        }
        log.line(LogLevel::Error, "the error");
        log.finish_call();
        assert_eq!(*sink.0 .0.lock().unwrap(), ["the error"]);
    }

    #[test]
    fn a_guest_line_cannot_start_another_line() {
        let sink = Arc::new(Lines::default());
        let mut log = call_log(sink.clone());
        log.line(
            LogLevel::Info,
            "ok\n2026-01-01T00:00:00Z ERROR kubelisten: forged\r",
        );
        log.line(LogLevel::Info, "colour \u{1b}[31mred\ttab é");
        log.line(LogLevel::Info, "sep\u{2028}rtl\u{202e}x");
        // Escaping cannot make a line longer than the limit.
        log.line(LogLevel::Info, &"\n".repeat(MAX_LINE_BYTES));
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                "ok\\n2026-01-01T00:00:00Z ERROR kubelisten: forged\\r",
                "colour \\u{1b}[31mred\ttab é",
                "sep\\u{2028}rtl\\u{202e}x",
                &"\\n".repeat(MAX_LINE_BYTES / 2),
            ]
        );
    }
}
