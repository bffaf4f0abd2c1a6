//! A job's matrix cells (`tessera run --matrix NAME=v1,v2`, `JobSpec.cells`): which cells a
//! job runs, the environment each one's steps get, and the rules a submitted set of cells must
//! keep.
//!
//! A plain job is one cell with an empty name and the job's environment. A matrix job's cells
//! each get the job's environment with the cell's own variables laid over it (a cell's value
//! wins over the job's), so everything keyed by the environment (prepare and list actions,
//! each test's cached pass, its history) is per cell.
//!
//! Not here: running a cell (`driver.rs`), how a client spells cells (`cli/src/spec`).

use std::collections::BTreeMap;

use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::tessera::v1::{JobSpec, MatrixCell};

/// Most cells one job may have: each cell is a whole run of the suite (its own prepare, list
/// and tests), so a bigger matrix is better split into jobs the fleet can share fairly.
pub const MAX_CELLS: usize = 64;

/// One cell of a job: its name (empty for a plain job) and the environment of its steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cell {
    /// `MatrixCell.name`, as events carry it; empty for a plain job.
    pub(super) name: String,
    /// The job's environment with the cell's variables laid over it, sorted by name.
    pub(super) environment: Vec<EnvironmentVariable>,
}

impl Cell {
    /// The cells `spec` runs, in its order: its matrix cells, or the one unnamed cell of a
    /// plain job.
    pub(super) fn of(spec: &JobSpec) -> Vec<Cell> {
        if spec.cells.is_empty() {
            return vec![Cell {
                name: String::new(),
                environment: spec.environment.clone(),
            }];
        }
        spec.cells
            .iter()
            .map(|cell| {
                let mut env: BTreeMap<&str, &str> = spec
                    .environment
                    .iter()
                    .map(|v| (v.name.as_str(), v.value.as_str()))
                    .collect();
                for var in &cell.environment {
                    env.insert(&var.name, &var.value);
                }
                Cell {
                    name: cell.name.clone(),
                    environment: env
                        .into_iter()
                        .map(|(name, value)| EnvironmentVariable {
                            name: name.to_owned(),
                            value: value.to_owned(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// Whether `name` is a portable environment variable name: letters, digits and `_`, not
/// starting with a digit (POSIX's rule for names the shell can set).
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a submitted set of cells and sorts each one's variables by name; the error is the
/// problem, in words that name the cell and the variable.
pub(super) fn check(cells: &mut [MatrixCell]) -> Result<(), String> {
    if cells.len() > MAX_CELLS {
        return Err(format!(
            "{} cells, more than the limit of {MAX_CELLS}",
            cells.len()
        ));
    }
    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut seen_envs: BTreeMap<Vec<(&str, &str)>, &str> = BTreeMap::new();
    for (i, cell) in cells.iter_mut().enumerate() {
        if cell.name.is_empty() {
            return Err(format!("cell {} has no name", i + 1));
        }
        if cell.environment.is_empty() {
            return Err(format!("cell {} sets no variable", cell.name));
        }
        cell.environment.sort_by(|a, b| a.name.cmp(&b.name));
        for var in &cell.environment {
            if !is_variable_name(&var.name) {
                return Err(format!(
                    "cell {}: \"{}\" is not a valid environment variable name (letters, digits \
                     and _, not starting with a digit)",
                    cell.name, var.name
                ));
            }
            if var.value.is_empty() {
                return Err(format!(
                    "cell {}: variable {} has an empty value",
                    cell.name, var.name
                ));
            }
        }
        if let Some(pair) = cell
            .environment
            .windows(2)
            .find(|pair| pair[0].name == pair[1].name)
        {
            return Err(format!(
                "cell {}: variable {} is set twice",
                cell.name, pair[0].name
            ));
        }
    }
    for (i, cell) in cells.iter().enumerate() {
        if seen_names.insert(&cell.name, i).is_some() {
            return Err(format!("cell {} is given twice", cell.name));
        }
        let env: Vec<(&str, &str)> = cell
            .environment
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .collect();
        if let Some(first) = seen_envs.insert(env, &cell.name) {
            return Err(format!(
                "cells {first} and {} set the same variables to the same values",
                cell.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> EnvironmentVariable {
        EnvironmentVariable {
            name: name.into(),
            value: value.into(),
        }
    }

    fn cell(name: &str, vars: &[(&str, &str)]) -> MatrixCell {
        MatrixCell {
            name: name.into(),
            environment: vars.iter().map(|(n, v)| var(n, v)).collect(),
        }
    }

    #[test]
    fn a_plain_job_is_one_unnamed_cell_and_a_cells_values_win() {
        let mut spec = JobSpec {
            environment: vec![var("MODE", "job"), var("PATH", "/bin")],
            ..JobSpec::default()
        };
        assert_eq!(
            Cell::of(&spec),
            [Cell {
                name: String::new(),
                environment: spec.environment.clone(),
            }]
        );
        spec.cells = vec![
            cell("MODE=a", &[("MODE", "a")]),
            cell("MODE=b,X=1", &[("X", "1"), ("MODE", "b")]),
        ];
        let cells = Cell::of(&spec);
        assert_eq!(cells[0].name, "MODE=a");
        assert_eq!(
            cells[0].environment,
            [var("MODE", "a"), var("PATH", "/bin")]
        );
        assert_eq!(
            cells[1].environment,
            [var("MODE", "b"), var("PATH", "/bin"), var("X", "1")]
        );
    }

    #[test]
    fn bad_cells_are_refused_naming_the_problem() {
        let refused = |cells: &mut [MatrixCell]| check(cells).expect_err("refused");
        assert_eq!(
            refused(&mut vec![cell("A=1", &[("A", "1")]); MAX_CELLS + 1]),
            "65 cells, more than the limit of 64"
        );
        assert_eq!(
            refused(&mut [cell("", &[("A", "1")])]),
            "cell 1 has no name"
        );
        assert_eq!(refused(&mut [cell("A=", &[])]), "cell A= sets no variable");
        assert_eq!(
            refused(&mut [cell("A=", &[("A", "")])]),
            "cell A=: variable A has an empty value"
        );
        assert!(refused(&mut [cell("1A=x", &[("1A", "x")])]).contains("\"1A\" is not a valid"));
        assert!(refused(&mut [cell("A-B=x", &[("A-B", "x")])]).contains("\"A-B\" is not a valid"));
        assert_eq!(
            refused(&mut [cell("A=1", &[("A", "1"), ("A", "2")])]),
            "cell A=1: variable A is set twice"
        );
        assert_eq!(
            refused(&mut [cell("A=1", &[("A", "1")]), cell("A=1", &[("A", "2")])]),
            "cell A=1 is given twice"
        );
        assert_eq!(
            refused(&mut [cell("one", &[("A", "1")]), cell("two", &[("A", "1")])]),
            "cells one and two set the same variables to the same values"
        );
        let mut good = [
            cell("A=1,B=x", &[("B", "x"), ("A", "1")]),
            cell("A=2,B=x", &[("A", "2"), ("B", "x")]),
        ];
        check(&mut good).expect("good cells");
        assert_eq!(good[0].environment, [var("A", "1"), var("B", "x")]);
    }

    #[test]
    fn variable_names_are_posix_names() {
        for good in ["A", "_x", "FEATURE_FLAG_2", "a1"] {
            assert!(is_variable_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }
}
