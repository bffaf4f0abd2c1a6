//! JUnit XML reports: the one parser behind every adapter whose tool writes them (nextest,
//! pytest, and a generic command with a `{junit}` placeholder).
//!
//! JUnit XML has no single schema; this reads the common core that Ant, Surefire, pytest,
//! nextest and most CI systems agree on: `<testsuites>` (optional) holding `<testsuite name>`
//! elements (possibly nested) holding `<testcase name classname time>` elements, whose
//! children say how the case ended: `<failure>`, `<error>`, `<skipped>`, or none for a pass,
//! plus `<system-out>`/`<system-err>`, and the failed earlier tries a tool that retries tests
//! itself records (Surefire's and nextest's `flakyFailure`/`flakyError`/`rerunFailure`/
//! `rerunError`), whose texts become [`JunitCase::reruns`]. Everything else (properties,
//! unknown elements) is skipped. This module does not decide which case is which
//! test: the adapters map cases to their ids.

use std::time::Duration;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::QName;

/// How a JUnit test case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseStatus {
    /// No `<failure>`, `<error>` or `<skipped>` child.
    Passed,
    /// A `<failure>` child: an assertion failed.
    Failed,
    /// An `<error>` child: the test (or its setup or teardown) raised an unexpected error.
    Errored,
    /// A `<skipped>` child.
    Skipped,
}

/// One `<testcase>` element.
#[derive(Clone, Debug, PartialEq)]
pub struct JunitCase {
    /// Name of the innermost enclosing `<testsuite>`, empty if none.
    pub suite: String,
    /// The `classname` attribute, empty if absent.
    pub classname: String,
    /// The `name` attribute.
    pub name: String,
    /// The `time` attribute (seconds), if present and valid.
    pub time: Option<Duration>,
    /// How the case ended; when a case has several outcome children, the worst one wins
    /// (errored over failed over skipped).
    pub status: CaseStatus,
    /// The `message` attribute of the outcome element, if any.
    pub message: Option<String>,
    /// The `type` attribute of the outcome element, if any (nextest writes `test timeout`).
    pub kind: Option<String>,
    /// The text of the outcome elements (a failure's stack trace, a skip reason).
    pub detail: String,
    /// Text of `<system-out>`.
    pub system_out: String,
    /// Text of `<system-err>`.
    pub system_err: String,
    /// One text per failed earlier try the tool recorded before this case's outcome
    /// (`flakyFailure`, `flakyError`, `rerunFailure`, `rerunError`), oldest first.
    pub reruns: Vec<String>,
}

impl JunitCase {
    /// Everything a person reading a failure wants, in one string: the failed earlier tries,
    /// message, detail, then the captured standard output and error. Empty parts are left out.
    pub fn combined_output(&self) -> String {
        let mut out = String::new();
        for (i, rerun) in self.reruns.iter().enumerate() {
            push_part(
                &mut out,
                &format!("try {} failed:\n{}", i + 1, rerun.trim_end()),
            );
        }
        let message_in_detail = self
            .message
            .as_deref()
            .is_some_and(|m| self.detail.contains(m));
        if let Some(message) = self.message.as_deref().filter(|_| !message_in_detail) {
            push_part(&mut out, message);
        }
        push_part(&mut out, &self.detail);
        push_part(&mut out, &self.system_out);
        push_part(&mut out, &self.system_err);
        out
    }
}

fn push_part(out: &mut String, part: &str) {
    if part.trim().is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(part);
}

/// Why a JUnit report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    /// The XML itself is malformed (including a file cut short).
    #[error("malformed XML at byte {position}")]
    Xml {
        /// Byte offset where the reader gave up.
        position: u64,
        /// What the XML reader objected to.
        #[source]
        source: quick_xml::Error,
    },
    /// The document ended inside an element: the writer was probably killed mid-write.
    #[error("document ends inside <{element}>")]
    Truncated {
        /// The innermost element still open at the end.
        element: String,
    },
    /// A `<testcase>` without a `name` attribute.
    #[error("<testcase> without a name attribute")]
    UnnamedCase,
}

/// Where the reader is: the stack of open elements that matter.
#[derive(Default)]
struct ParseState {
    suites: Vec<String>,
    case: Option<JunitCase>,
    /// The child of `<testcase>` whose text is being collected.
    capture: Option<Capture>,
    /// Depth of unknown elements nested inside the current capture or case.
    open: Vec<String>,
    cases: Vec<JunitCase>,
}

#[derive(Clone, Copy, PartialEq)]
enum Capture {
    Detail,
    SystemOut,
    SystemErr,
    /// The text of a failed earlier try (goes to the last of [`JunitCase::reruns`]).
    Rerun,
    /// Inside an element whose text is not wanted (properties, flakyFailure, ...).
    Ignored,
}

/// Parses a JUnit XML report into its test cases, in document order.
pub fn parse(xml: &str) -> Result<Vec<JunitCase>, JunitError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut state = ParseState::default();
    loop {
        let event = reader.read_event().map_err(|source| JunitError::Xml {
            position: reader.error_position(),
            source,
        })?;
        match event {
            Event::Start(start) => {
                state.open.push(element_name(start.name()));
                state.start(&start, false)?;
            }
            Event::Empty(start) => state.start(&start, true)?,
            Event::End(end) => {
                state.open.pop();
                state.end(&element_name(end.name()));
            }
            Event::Text(text) => {
                let text = text.xml10_content().map_err(|e| JunitError::Xml {
                    position: reader.buffer_position(),
                    source: e.into(),
                })?;
                state.text(&text);
            }
            Event::CData(data) => {
                let text = data.xml10_content().map_err(|e| JunitError::Xml {
                    position: reader.buffer_position(),
                    source: e.into(),
                })?;
                state.text(&text);
            }
            Event::GeneralRef(reference) => {
                let xml_error = |source: quick_xml::Error| JunitError::Xml {
                    position: reader.buffer_position(),
                    source,
                };
                if let Some(ch) = reference.resolve_char_ref().map_err(xml_error)? {
                    state.text(ch.encode_utf8(&mut [0; 4]));
                } else {
                    let name = reference
                        .decode()
                        .map_err(|e| xml_error(quick_xml::Error::from(e)))?;
                    // An unknown entity is kept as written rather than failing the report.
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(resolved) => state.text(resolved),
                        None => state.text(&format!("&{name};")),
                    }
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if let Some(element) = state.open.pop() {
        return Err(JunitError::Truncated { element });
    }
    Ok(state.cases)
}

fn element_name(name: QName<'_>) -> String {
    String::from_utf8_lossy(name.local_name().as_ref()).into_owned()
}

fn attribute(start: &BytesStart<'_>, key: &str) -> Option<String> {
    start
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == key.as_bytes())
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
}

fn severity(status: CaseStatus) -> u8 {
    match status {
        CaseStatus::Passed => 0,
        CaseStatus::Skipped => 1,
        CaseStatus::Failed => 2,
        CaseStatus::Errored => 3,
    }
}

impl ParseState {
    fn start(&mut self, start: &BytesStart<'_>, empty: bool) -> Result<(), JunitError> {
        let name = element_name(start.name());
        if self.capture.is_some() {
            return Ok(()); // markup inside captured text: keep only the text
        }
        match (name.as_str(), self.case.as_mut()) {
            ("testsuite", None) if !empty => {
                self.suites
                    .push(attribute(start, "name").unwrap_or_default());
            }
            ("testcase", None) => {
                let case = JunitCase {
                    suite: self.suites.last().cloned().unwrap_or_default(),
                    classname: attribute(start, "classname").unwrap_or_default(),
                    name: attribute(start, "name").ok_or(JunitError::UnnamedCase)?,
                    time: attribute(start, "time")
                        .and_then(|t| t.trim().parse::<f64>().ok())
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok()),
                    status: CaseStatus::Passed,
                    message: None,
                    kind: None,
                    detail: String::new(),
                    system_out: String::new(),
                    system_err: String::new(),
                    reruns: Vec::new(),
                };
                if empty {
                    self.cases.push(case);
                } else {
                    self.case = Some(case);
                }
            }
            (outcome @ ("failure" | "error" | "skipped"), Some(case)) => {
                let status = match outcome {
                    "failure" => CaseStatus::Failed,
                    "error" => CaseStatus::Errored,
                    _ => CaseStatus::Skipped,
                };
                if severity(status) >= severity(case.status) {
                    case.status = status;
                    if let Some(message) = attribute(start, "message") {
                        case.message = Some(message);
                    }
                    if let Some(kind) = attribute(start, "type") {
                        case.kind = Some(kind);
                    }
                }
                if !empty {
                    self.capture = Some(Capture::Detail);
                }
            }
            ("flakyFailure" | "flakyError" | "rerunFailure" | "rerunError", Some(case)) => {
                let message = attribute(start, "message").unwrap_or_default();
                case.reruns.push(message);
                if !empty {
                    self.capture = Some(Capture::Rerun);
                }
            }
            ("system-out", Some(_)) if !empty => self.capture = Some(Capture::SystemOut),
            ("system-err", Some(_)) if !empty => self.capture = Some(Capture::SystemErr),
            (_, Some(_)) if !empty => self.capture = Some(Capture::Ignored),
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, name: &str) {
        // A capture ends when the element that started it closes, that is when no element
        // opened inside the test case remains open beneath it.
        if self.capture.is_some() {
            let case_depth = self.open.iter().rposition(|n| n == "testcase");
            if case_depth.is_some_and(|d| d + 1 == self.open.len()) {
                self.capture = None;
            }
            return;
        }
        match name {
            "testcase" => {
                if let Some(case) = self.case.take() {
                    self.cases.push(case);
                }
            }
            "testsuite" => {
                self.suites.pop();
            }
            _ => {}
        }
    }

    fn text(&mut self, text: &str) {
        let (Some(case), Some(capture)) = (self.case.as_mut(), self.capture) else {
            return;
        };
        match capture {
            Capture::Detail => case.detail.push_str(text),
            Capture::SystemOut => case.system_out.push_str(text),
            Capture::SystemErr => case.system_err.push_str(text),
            Capture::Rerun => {
                if let Some(rerun) = case.reruns.last_mut() {
                    if !rerun.is_empty() && !rerun.ends_with('\n') {
                        rerun.push('\n');
                    }
                    rerun.push_str(text);
                }
            }
            Capture::Ignored => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_suites_cases_and_outcomes() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="run">
  <testsuite name="crate::bin">
    <testcase name="a" classname="crate::bin" time="0.250">
      <system-out>hello &amp; bye&#10;</system-out>
      <system-err></system-err>
    </testcase>
    <testcase name="b" classname="crate::bin" time="1.5">
      <failure message="boom" type="panic">stack
trace</failure>
      <system-out><![CDATA[<raw>]]></system-out>
    </testcase>
    <testcase name="c" classname="x"><skipped message="later"/></testcase>
    <testcase name="d"><error message="setup">fixture missing</error></testcase>
    <testcase name="e" classname="y" time="bogus"/>
  </testsuite>
</testsuites>"#;
        let cases = parse(xml).unwrap();
        assert_eq!(cases.len(), 5);
        let a = &cases[0];
        assert_eq!(
            (a.suite.as_str(), a.name.as_str(), a.status),
            ("crate::bin", "a", CaseStatus::Passed)
        );
        assert_eq!(a.time, Some(Duration::from_millis(250)));
        assert_eq!(a.system_out, "hello & bye\n");
        let b = &cases[1];
        assert_eq!(b.status, CaseStatus::Failed);
        assert_eq!(b.message.as_deref(), Some("boom"));
        assert_eq!(b.kind.as_deref(), Some("panic"));
        assert_eq!(b.detail, "stack\ntrace");
        assert_eq!(b.system_out, "<raw>");
        assert_eq!(b.combined_output(), "boom\nstack\ntrace\n<raw>");
        assert_eq!(cases[2].status, CaseStatus::Skipped);
        assert_eq!(cases[2].message.as_deref(), Some("later"));
        assert_eq!(cases[3].status, CaseStatus::Errored);
        assert_eq!(cases[3].classname, "");
        assert_eq!(cases[4].time, None);
    }

    #[test]
    fn nested_suites_name_the_innermost() {
        let xml = r#"<testsuite name="outer"><testsuite name="inner">
            <testcase name="t"/></testsuite><testcase name="u"/></testsuite>"#;
        let cases = parse(xml).unwrap();
        assert_eq!(cases[0].suite, "inner");
        assert_eq!(cases[1].suite, "outer");
    }

    #[test]
    fn reruns_and_properties_do_not_change_the_outcome() {
        let xml = r#"<testsuite name="s"><testcase name="t">
            <properties><property name="k" value="v"/></properties>
            <flakyFailure message="first try">old trace</flakyFailure>
            <system-out>ok</system-out></testcase></testsuite>"#;
        let case = &parse(xml).unwrap()[0];
        assert_eq!(case.status, CaseStatus::Passed);
        assert_eq!(case.detail, "");
        assert_eq!(case.system_out, "ok");
        // The failed try is kept apart, and told first.
        assert_eq!(case.reruns, vec!["first try\nold trace"]);
        assert!(
            case.combined_output()
                .starts_with("try 1 failed:\nfirst try\nold trace\nok")
        );
    }

    #[test]
    fn worst_outcome_wins() {
        let xml = r#"<testsuite><testcase name="t"><failure message="f"/>
            <error message="teardown"/><skipped/></testcase></testsuite>"#;
        let case = &parse(xml).unwrap()[0];
        assert_eq!(case.status, CaseStatus::Errored);
        assert_eq!(case.message.as_deref(), Some("teardown"));
    }

    #[test]
    fn truncated_report_is_an_error() {
        let xml = r#"<testsuites><testsuite name="s"><testcase name="t">"#;
        assert!(matches!(parse(xml), Err(JunitError::Truncated { .. })));
    }

    #[test]
    fn mismatched_tags_are_an_error() {
        let xml = r#"<testsuite><testcase name="t"></testsuite>"#;
        assert!(matches!(parse(xml), Err(JunitError::Xml { .. })));
    }

    #[test]
    fn unnamed_case_is_an_error() {
        assert!(matches!(
            parse(r#"<testsuite><testcase classname="c"/></testsuite>"#),
            Err(JunitError::UnnamedCase)
        ));
    }
}
