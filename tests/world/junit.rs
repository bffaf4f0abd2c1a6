//! A small JUnit XML reader, for pytest's own report and Tessera's: each test case with its
//! suite, class name, name and the marks inside it (`failure`, `error`, `skipped`,
//! `flakyFailure`, with their `type` and `message`). Deliberately not `tessera-runners`'
//! parser: the comparison must not share code with what it checks.

use quick_xml::events::{BytesStart, Event};

/// A mark inside a test case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// `failure`, `error`, `skipped`, `flakyFailure`, ...
    pub tag: String,
    /// Its `type` attribute (pytest: `pytest.xfail`, `pytest.skip`).
    pub kind: String,
    /// Its `message` attribute.
    pub message: String,
}

/// One `<testcase>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The enclosing `<testsuite>`'s name.
    pub suite: String,
    /// `classname`.
    pub classname: String,
    /// `name`.
    pub name: String,
    /// The marks inside it, in order.
    pub marks: Vec<Mark>,
}

impl Case {
    /// Whether it holds a mark with this tag.
    pub fn has(&self, tag: &str) -> bool {
        self.marks.iter().any(|m| m.tag == tag)
    }
}

fn attribute(start: &BytesStart<'_>, key: &str) -> String {
    start
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == key.as_bytes())
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
        .unwrap_or_default()
}

fn tag(start: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(start.name().local_name().as_ref()).into_owned()
}

/// The test cases of `xml`, in document order.
pub fn cases(xml: &str) -> Result<Vec<Case>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut suites: Vec<String> = Vec::new();
    let mut open: Vec<String> = Vec::new();
    let mut current: Option<Case> = None;
    let mut out = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("bad XML at byte {}: {e}", reader.error_position()))?;
        let (start, empty) = match &event {
            Event::Start(s) => (s, false),
            Event::Empty(s) => (s, true),
            Event::End(end) => {
                let name = String::from_utf8_lossy(end.name().local_name().as_ref()).into_owned();
                open.pop();
                match name.as_str() {
                    "testcase" => out.extend(current.take()),
                    "testsuite" => {
                        suites.pop();
                    }
                    _ => {}
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = tag(start);
        match (name.as_str(), current.as_mut()) {
            ("testsuite", None) if !empty => suites.push(attribute(start, "name")),
            ("testcase", None) => {
                let case = Case {
                    suite: suites.last().cloned().unwrap_or_default(),
                    classname: attribute(start, "classname"),
                    name: attribute(start, "name"),
                    marks: Vec::new(),
                };
                if empty {
                    out.push(case);
                } else {
                    current = Some(case);
                }
            }
            // Direct children of the test case only: pytest nests nothing inside them, and
            // Tessera's flakyFailure holds a system-out that is no mark.
            (_, Some(case)) if open.last().is_some_and(|o| o == "testcase") => {
                case.marks.push(Mark {
                    tag: name.clone(),
                    kind: attribute(start, "type"),
                    message: attribute(start, "message"),
                });
            }
            _ => {}
        }
        if !empty {
            open.push(name);
        }
    }
    if !open.is_empty() {
        return Err(format!("the report ends inside <{}>", open.join("><")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_come_with_their_suite_and_only_their_own_marks() {
        let xml = r#"<?xml version="1.0"?>
<testsuites><testsuite name="pytest">
  <testcase classname="tests.test_a" name="test_x[a&amp;b]"/>
  <testcase classname="tests.test_a" name="test_y"><skipped type="pytest.xfail" message="why"/></testcase>
  <testcase classname="tests.test_a" name="test_z"><failure message="boom">trace</failure><system-out>o</system-out></testcase>
</testsuite><testsuite name="g">
  <testcase classname="g" name="t"><flakyFailure type="flaky"><system-out>x</system-out></flakyFailure></testcase>
</testsuite></testsuites>"#;
        let parsed = cases(xml).expect("parses");
        let brief: Vec<(String, String, Vec<String>)> = parsed
            .iter()
            .map(|c| {
                (
                    c.suite.clone(),
                    c.name.clone(),
                    c.marks
                        .iter()
                        .map(|m| format!("{}:{}", m.tag, m.kind))
                        .collect(),
                )
            })
            .collect();
        let own = |s: &str, n: &str, m: &[&str]| {
            (
                s.to_owned(),
                n.to_owned(),
                m.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            brief,
            [
                own("pytest", "test_x[a&b]", &[]),
                own("pytest", "test_y", &["skipped:pytest.xfail"]),
                own("pytest", "test_z", &["failure:", "system-out:"]),
                own("g", "t", &["flakyFailure:flaky"]),
            ]
        );
        assert!(cases(r#"<testsuite name="x"><testcase name="t">"#).is_err());
    }
}
