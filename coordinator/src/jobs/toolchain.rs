//! Pins a job to one toolchain before its first step (see `tessera_runners::toolchain`).
//!
//! Agents advertise `tool=<name>` and `toolchain.<name>=<version>+<fingerprint>` for the tools
//! they found. A job whose runner needs a tool gets both as extra platform requirements on
//! every step: `tool` so that an agent without it never gets the work, and the toolchain value
//! (the one with the most slots among the connected agents that fit the job) so that every step
//! runs with the same toolchain and the value enters every action digest and every test's cache
//! key. An upgraded toolchain therefore never answers from a pass recorded with the old one.
//!
//! With no agent connected the job waits (agents may be reconnecting); with agents connected
//! that fit the job but none has the tool, the job ends with an error that says which tool.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_proto::reapi::platform::Property;
use tessera_runners::toolchain::{TOOL_KEY, Toolchain};

use super::driver::Stop;
use super::job::Job;
use crate::execution::platform::{Platform, is_execution_only};
use crate::execution::scheduler::{AgentInfo, SchedulerHandle};

/// How often a job waiting for its first agent looks again.
const POLL: Duration = Duration::from_millis(200);

/// The extra platform properties for `job`: empty for a runner that needs no known tool.
pub(super) async fn pin(scheduler: &SchedulerHandle, job: &Job) -> Result<Vec<Property>, Stop> {
    let Some(toolchain) = Toolchain::of(&job.runner) else {
        return Ok(Vec::new());
    };
    let wanted = Platform::new(
        job.spec
            .platform
            .iter()
            .filter(|p| !is_execution_only(&p.name))
            .map(|p| (p.name.clone(), p.value.clone())),
    );
    let mut waiting_noted = false;
    loop {
        let agents = match scheduler.stats().await {
            Ok((_, agents)) => agents,
            Err(error) => return Err(Stop::Infrastructure(error.to_string())),
        };
        match choose(toolchain, &wanted, &agents) {
            Choice::Pinned(value) => {
                return Ok(vec![
                    Property {
                        name: TOOL_KEY.to_owned(),
                        value: toolchain.name().to_owned(),
                    },
                    Property {
                        name: toolchain.key(),
                        value,
                    },
                ]);
            }
            Choice::Missing => {
                return Err(Stop::Error {
                    message: format!(
                        "no connected agent that fits the job has {tool}: agents advertise \
                         `tool={tool}` when they find it on their PATH at start; install {tool} \
                         where the agents run (and restart them), or start an agent where it is",
                        tool = toolchain.name()
                    ),
                    log: String::new(),
                });
            }
            Choice::NoAgents => {
                if !waiting_noted {
                    waiting_noted = true;
                    tracing::info!(job = %job.id, tool = toolchain.name(), "waiting for an agent");
                }
                tokio::select! {
                    _ = job.cancel.cancelled() => return Err(Stop::Cancelled),
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Choice {
    /// The toolchain value to pin.
    Pinned(String),
    /// Agents that fit the job are connected, and none has the tool.
    Missing,
    /// No agent that fits the job is connected.
    NoAgents,
}

/// The toolchain value with the most slots among the agents that fit `wanted`, ties broken by
/// the greater value (a newer version, usually).
fn choose(toolchain: Toolchain, wanted: &Platform, agents: &[AgentInfo]) -> Choice {
    let key = toolchain.key();
    let mut slots: BTreeMap<&str, u32> = BTreeMap::new();
    let mut fitting = 0;
    for agent in agents.iter().filter(|a| !a.draining) {
        let properties = Platform::new(agent.properties.iter().cloned());
        if !wanted.satisfied_by(&properties) {
            continue;
        }
        fitting += 1;
        let has_tool = agent
            .properties
            .iter()
            .any(|(k, v)| k == TOOL_KEY && v == toolchain.name());
        if !has_tool {
            continue;
        }
        for (_, value) in agent.properties.iter().filter(|(k, _)| *k == key) {
            *slots.entry(value.as_str()).or_default() += agent.slots;
        }
    }
    match slots
        .into_iter()
        .max_by_key(|(value, slots)| (*slots, *value))
    {
        Some((value, _)) => Choice::Pinned(value.to_owned()),
        None if fitting > 0 => Choice::Missing,
        None => Choice::NoAgents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, slots: u32, props: &[(&str, &str)]) -> AgentInfo {
        AgentInfo {
            id: id.to_owned(),
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            slots,
            running: 0,
            draining: false,
        }
    }

    #[test]
    fn the_toolchain_with_most_slots_wins_among_fitting_agents() {
        let any = Platform::default();
        let agents = [
            agent("a", 4, &[("tool", "go"), ("toolchain.go", "1.19+aa")]),
            agent("b", 2, &[("tool", "go"), ("toolchain.go", "1.21+bb")]),
            agent("c", 4, &[("tool", "go"), ("toolchain.go", "1.21+bb")]),
            agent("d", 16, &[("pool", "big")]),
        ];
        assert_eq!(
            choose(Toolchain::Go, &any, &agents),
            Choice::Pinned("1.21+bb".into())
        );
        // Only agents that fit the job's own platform count.
        let big = Platform::new([("pool".to_owned(), "big".to_owned())]);
        assert_eq!(choose(Toolchain::Go, &big, &agents), Choice::Missing);
        let small = Platform::new([("pool".to_owned(), "small".to_owned())]);
        assert_eq!(choose(Toolchain::Go, &small, &agents), Choice::NoAgents);
        assert_eq!(choose(Toolchain::Cargo, &any, &agents), Choice::Missing);
        assert_eq!(choose(Toolchain::Cargo, &any, &[]), Choice::NoAgents);
    }
}
