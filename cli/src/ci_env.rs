//! Job labels read from the CI system's environment: which system runs `tessera run`, and the
//! branch, commit, pipeline name and a link to this run, from each system's documented variables.
//!
//! Owns only the reading; merging with `--label` and checking keys and values is
//! `crate::spec::labels`' job (a value it refuses is dropped there, not fatal).
//!
//! Where each label comes from (the first variable set wins; the sources are cited at each
//! system in `CiSystem::run`):
//!
//! - **GitHub Actions** (`ci=github-actions`, when `GITHUB_ACTIONS=true`): `branch` from
//!   `GITHUB_HEAD_REF` (pull requests), `GITHUB_REF_NAME`; `commit` from `GITHUB_SHA`;
//!   `pipeline` from `GITHUB_WORKFLOW`; `pipeline_url` is
//!   `$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID`.
//! - **GitLab CI** (`ci=gitlab-ci`, when `GITLAB_CI=true`): `branch` from
//!   `CI_MERGE_REQUEST_SOURCE_BRANCH_NAME`, `CI_COMMIT_REF_NAME`; `commit` from `CI_COMMIT_SHA`;
//!   `pipeline` from `CI_PIPELINE_NAME`, `CI_PROJECT_PATH`; `pipeline_url` from
//!   `CI_PIPELINE_URL`.
//! - **Buildkite** (`ci=buildkite`, when `BUILDKITE=true`): `BUILDKITE_BRANCH`,
//!   `BUILDKITE_COMMIT`, `BUILDKITE_PIPELINE_SLUG`, `BUILDKITE_BUILD_URL`.
//! - **Jenkins** (`ci=jenkins`, when `JENKINS_URL` and `BUILD_NUMBER` are set): `branch` from
//!   `CHANGE_BRANCH` (change requests), `BRANCH_NAME`, `GIT_BRANCH` without `origin/`;
//!   `commit` from `GIT_COMMIT`; `pipeline` from `JOB_NAME`; `pipeline_url` from `BUILD_URL`.
//!
//! A pull or merge request's branch is its source branch, not the merge ref the system checks
//! out (`123/merge`, `PR-123`): `branch.broken` and `branch.fixed` compare jobs by branch, and
//! the source branch is the one whose author should hear about it.

use std::collections::BTreeMap;

#[cfg(test)]
use tessera_coordinator::jobs::labels::MAX_LABEL_VALUE;
use tessera_coordinator::jobs::labels::cut_to_fit;

/// The labels the CI system's environment gives a job (`ci`, `branch`, `commit`,
/// `pipeline`, `pipeline_url`); empty outside CI. A label whose variables are unset or empty is
/// left out; a value is trimmed and cut to [`MAX_LABEL_VALUE`](tessera_coordinator::jobs::labels::MAX_LABEL_VALUE) bytes.
pub fn labels(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let env = Env(env);
    let Some(system) = CiSystem::detect(&env) else {
        return BTreeMap::new();
    };
    let run = system.run(&env);
    let mut labels = BTreeMap::from([("ci".to_owned(), system.label().to_owned())]);
    let found = [
        ("branch", run.branch),
        ("commit", run.commit),
        ("pipeline", run.pipeline),
        ("pipeline_url", run.pipeline_url),
    ];
    for (key, value) in found {
        if let Some(value) = value {
            labels.insert(key.to_owned(), fit(value));
        }
    }
    labels
}

/// A CI system whose environment `labels` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CiSystem {
    GitHubActions,
    GitLabCi,
    Buildkite,
    Jenkins,
}

/// What the environment says about this run; `None` where its variables are unset or empty.
#[derive(Debug, Default)]
struct Run {
    branch: Option<String>,
    commit: Option<String>,
    pipeline: Option<String>,
    pipeline_url: Option<String>,
}

impl CiSystem {
    /// The system running this process, if any. Checked in a fixed order, so a runner nested in
    /// another (a Jenkins agent started from a GitHub workflow) is named by the outer one.
    fn detect(env: &Env<'_>) -> Option<Self> {
        // GitHub: "GITHUB_ACTIONS: Always set to true when GitHub Actions is running the
        // workflow" (docs.github.com/en/actions/reference/variables-reference).
        if env.is_true("GITHUB_ACTIONS") {
            Some(Self::GitHubActions)
        // GitLab: "GITLAB_CI: Available for all jobs executed in CI/CD. true when available"
        // (docs.gitlab.com/ci/variables/predefined_variables).
        } else if env.is_true("GITLAB_CI") {
            Some(Self::GitLabCi)
        // Buildkite: "BUILDKITE: Always true"
        // (buildkite.com/docs/pipelines/environment_variables).
        } else if env.is_true("BUILDKITE") {
            Some(Self::Buildkite)
        // Jenkins sets JENKINS_URL and BUILD_NUMBER on every build (JENKINS_URL/env-vars.html,
        // www.jenkins.io/doc/book/pipeline/jenkinsfile/#using-environment-variables).
        // JENKINS_URL alone is not enough: the Jenkins CLI reads it from a developer's shell.
        } else if env.get("JENKINS_URL").is_some() && env.get("BUILD_NUMBER").is_some() {
            Some(Self::Jenkins)
        } else {
            None
        }
    }

    /// The `ci` label's value.
    fn label(self) -> &'static str {
        match self {
            Self::GitHubActions => "github-actions",
            Self::GitLabCi => "gitlab-ci",
            Self::Buildkite => "buildkite",
            Self::Jenkins => "jenkins",
        }
    }

    /// This run's branch, commit, pipeline and link, from the system's documented variables.
    fn run(self, env: &Env<'_>) -> Run {
        match self {
            // docs.github.com/en/actions/reference/variables-reference (default environment
            // variables). GITHUB_HEAD_REF is "only set when the event that triggers a workflow
            // run is either pull_request or pull_request_target", and then GITHUB_REF_NAME is
            // the merge ref `<pr_number>/merge`. GITHUB_WORKFLOW is the workflow's name, or its
            // file's path when it has none. The run's page is
            // `$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID`.
            Self::GitHubActions => Run {
                branch: env.first(&["GITHUB_HEAD_REF", "GITHUB_REF_NAME"]),
                commit: env.owned("GITHUB_SHA"),
                pipeline: env.owned("GITHUB_WORKFLOW"),
                pipeline_url: match (
                    env.get("GITHUB_SERVER_URL"),
                    env.get("GITHUB_REPOSITORY"),
                    env.get("GITHUB_RUN_ID"),
                ) {
                    (Some(server), Some(repository), Some(run)) => Some(format!(
                        "{}/{repository}/actions/runs/{run}",
                        server.trim_end_matches('/')
                    )),
                    _ => None,
                },
            },
            // docs.gitlab.com/ci/variables/predefined_variables.
            // CI_MERGE_REQUEST_SOURCE_BRANCH_NAME is set only in merge request pipelines;
            // CI_COMMIT_REF_NAME is "the branch or tag name for which project is built".
            // CI_PIPELINE_NAME is `workflow:name` (GitLab 16.3 and later, unset when the
            // pipeline has no name); CI_PROJECT_PATH (`group/project`) names it otherwise.
            Self::GitLabCi => Run {
                branch: env.first(&["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_REF_NAME"]),
                commit: env.owned("CI_COMMIT_SHA"),
                pipeline: env.first(&["CI_PIPELINE_NAME", "CI_PROJECT_PATH"]),
                pipeline_url: env.owned("CI_PIPELINE_URL"),
            },
            // buildkite.com/docs/pipelines/environment_variables. BUILDKITE_BRANCH is the
            // branch being built, a pull request's own branch in a pull request build
            // (`owner:branch` for one from a fork).
            Self::Buildkite => Run {
                branch: env.owned("BUILDKITE_BRANCH"),
                commit: env.owned("BUILDKITE_COMMIT"),
                pipeline: env.owned("BUILDKITE_PIPELINE_SLUG"),
                pipeline_url: env.owned("BUILDKITE_BUILD_URL"),
            },
            // JENKINS_URL/env-vars.html and www.jenkins.io/doc/book/pipeline/jenkinsfile/
            // #using-environment-variables; GIT_BRANCH and GIT_COMMIT come from the Git plugin
            // (plugins.jenkins.io/git, "Environment variables"), GIT_BRANCH with the remote's
            // name in front ("origin/main"). In a multibranch project BRANCH_NAME is the branch,
            // or `PR-24` for a change request, whose source branch is CHANGE_BRANCH.
            Self::Jenkins => Run {
                branch: env
                    .first(&["CHANGE_BRANCH", "BRANCH_NAME"])
                    .or_else(|| {
                        env.get("GIT_BRANCH").map(|branch| {
                            branch.strip_prefix("origin/").unwrap_or(branch).to_owned()
                        })
                    })
                    .filter(|branch| !branch.is_empty()),
                commit: env.owned("GIT_COMMIT"),
                pipeline: env.owned("JOB_NAME"),
                pipeline_url: env.owned("BUILD_URL"),
            },
        }
    }
}

/// The process environment, read so that unset and empty (or blank) are the same.
struct Env<'a>(&'a BTreeMap<String, String>);

impl Env<'_> {
    /// `name`'s value trimmed, `None` if unset or blank.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    fn owned(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    /// The value of the first of `names` that is set.
    fn first(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|name| self.owned(name))
    }

    /// Whether `name` is `true` (GitHub and GitLab write `true`; accept `TRUE` too).
    fn is_true(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|value| value.eq_ignore_ascii_case("true"))
    }
}

/// `value` cut to at most [`MAX_LABEL_VALUE`](tessera_coordinator::jobs::labels::MAX_LABEL_VALUE) bytes on a character boundary: a pipeline name
/// or URL that long is still worth its head, where refusing it would lose it all.
fn fit(mut value: String) -> String {
    cut_to_fit(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_coordinator::jobs::labels::label_problem;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        env(pairs)
    }

    /// Every label `labels` returns passes the rules the caller checks.
    fn checked(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let labels = labels(env);
        for (key, value) in &labels {
            assert_eq!(label_problem(key, value), None, "{key}={value}");
        }
        labels
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn github_actions_push() {
        let env = env(&[
            ("CI", "true"),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_HEAD_REF", ""),
            ("GITHUB_SHA", SHA),
            ("GITHUB_WORKFLOW", "Tests"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/widgets"),
            ("GITHUB_RUN_ID", "1658821493"),
        ]);
        assert_eq!(
            checked(&env),
            expected(&[
                ("ci", "github-actions"),
                ("branch", "main"),
                ("commit", SHA),
                ("pipeline", "Tests"),
                (
                    "pipeline_url",
                    "https://github.com/acme/widgets/actions/runs/1658821493"
                ),
            ])
        );
    }

    #[test]
    fn github_actions_pull_request_is_labelled_with_its_source_branch() {
        let env = env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF_NAME", "42/merge"),
            ("GITHUB_HEAD_REF", "feature/faster-cache"),
            ("GITHUB_SHA", SHA),
        ]);
        let labels = checked(&env);
        assert_eq!(labels["branch"], "feature/faster-cache");
        // No server, repository or run id: no link rather than a broken one.
        assert!(!labels.contains_key("pipeline_url"));
        assert!(!labels.contains_key("pipeline"));
    }

    #[test]
    fn gitlab_branch_pipeline() {
        let env = env(&[
            ("CI", "true"),
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_REF_NAME", "main"),
            ("CI_COMMIT_SHA", SHA),
            ("CI_PROJECT_PATH", "acme/widgets"),
            ("CI_PIPELINE_NAME", ""),
            (
                "CI_PIPELINE_URL",
                "https://gitlab.com/acme/widgets/-/pipelines/1093434561",
            ),
        ]);
        assert_eq!(
            checked(&env),
            expected(&[
                ("ci", "gitlab-ci"),
                ("branch", "main"),
                ("commit", SHA),
                ("pipeline", "acme/widgets"),
                (
                    "pipeline_url",
                    "https://gitlab.com/acme/widgets/-/pipelines/1093434561"
                ),
            ])
        );
    }

    #[test]
    fn gitlab_merge_request_pipeline_is_labelled_with_its_source_branch_and_name() {
        let env = env(&[
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_REF_NAME", "refs/merge-requests/59/head"),
            ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "fix-flaky-login"),
            ("CI_PIPELINE_NAME", "MR pipeline"),
            ("CI_PROJECT_PATH", "acme/widgets"),
        ]);
        let labels = checked(&env);
        assert_eq!(labels["branch"], "fix-flaky-login");
        assert_eq!(labels["pipeline"], "MR pipeline");
        assert!(!labels.contains_key("commit"));
    }

    #[test]
    fn buildkite() {
        let env = env(&[
            ("CI", "true"),
            ("BUILDKITE", "true"),
            ("BUILDKITE_BRANCH", "release-2.1"),
            ("BUILDKITE_COMMIT", SHA),
            ("BUILDKITE_PIPELINE_SLUG", "widgets-ci"),
            (
                "BUILDKITE_BUILD_URL",
                "https://buildkite.com/acme/widgets-ci/builds/59034",
            ),
        ]);
        assert_eq!(
            checked(&env),
            expected(&[
                ("ci", "buildkite"),
                ("branch", "release-2.1"),
                ("commit", SHA),
                ("pipeline", "widgets-ci"),
                (
                    "pipeline_url",
                    "https://buildkite.com/acme/widgets-ci/builds/59034"
                ),
            ])
        );
    }

    #[test]
    fn buildkite_pull_request_from_a_fork_keeps_its_branch_as_given() {
        let env = env(&[
            ("BUILDKITE", "true"),
            ("BUILDKITE_BRANCH", "alice:fix-typo"),
            ("BUILDKITE_PULL_REQUEST", "17"),
        ]);
        assert_eq!(checked(&env)["branch"], "alice:fix-typo");
    }

    #[test]
    fn jenkins_freestyle_job_strips_the_remote_from_git_branch() {
        let env = env(&[
            ("JENKINS_URL", "https://ci.acme.test/"),
            ("BUILD_NUMBER", "153"),
            ("GIT_BRANCH", "origin/main"),
            ("GIT_COMMIT", SHA),
            ("JOB_NAME", "widgets/tests"),
            (
                "BUILD_URL",
                "https://ci.acme.test/job/widgets/job/tests/153/",
            ),
        ]);
        assert_eq!(
            checked(&env),
            expected(&[
                ("ci", "jenkins"),
                ("branch", "main"),
                ("commit", SHA),
                ("pipeline", "widgets/tests"),
                (
                    "pipeline_url",
                    "https://ci.acme.test/job/widgets/job/tests/153/"
                ),
            ])
        );
    }

    #[test]
    fn jenkins_multibranch_prefers_branch_name_and_a_change_request_its_source_branch() {
        let branch = env(&[
            ("JENKINS_URL", "https://ci.acme.test/"),
            ("BUILD_NUMBER", "7"),
            ("BRANCH_NAME", "develop"),
            ("GIT_BRANCH", "origin/develop"),
        ]);
        assert_eq!(checked(&branch)["branch"], "develop");

        let change = env(&[
            ("JENKINS_URL", "https://ci.acme.test/"),
            ("BUILD_NUMBER", "8"),
            ("BRANCH_NAME", "PR-24"),
            ("CHANGE_BRANCH", "feature/quarantine"),
            ("GIT_BRANCH", "PR-24"),
        ]);
        assert_eq!(checked(&change)["branch"], "feature/quarantine");

        // Only `origin/` in front is the remote: a branch named like it elsewhere is kept.
        let nested = env(&[
            ("JENKINS_URL", "https://ci.acme.test/"),
            ("BUILD_NUMBER", "9"),
            ("GIT_BRANCH", "team/origin/x"),
        ]);
        assert_eq!(checked(&nested)["branch"], "team/origin/x");
    }

    #[test]
    fn jenkins_url_without_a_build_is_a_shell_with_the_jenkins_cli_not_ci() {
        let env = env(&[("JENKINS_URL", "https://ci.acme.test/")]);
        assert_eq!(labels(&env), BTreeMap::new());
    }

    #[test]
    fn outside_ci_there_are_no_labels() {
        assert_eq!(labels(&BTreeMap::new()), BTreeMap::new());
        let env = env(&[
            ("HOME", "/home/dev"),
            ("CI", "true"),
            ("GITHUB_ACTIONS", "false"),
            ("GITLAB_CI", ""),
            ("GITHUB_REF_NAME", "main"),
        ]);
        assert_eq!(labels(&env), BTreeMap::new());
    }

    #[test]
    fn unset_and_blank_variables_leave_their_label_out() {
        let env = env(&[
            ("BUILDKITE", "true"),
            ("BUILDKITE_BRANCH", "  "),
            ("BUILDKITE_COMMIT", ""),
        ]);
        assert_eq!(checked(&env), expected(&[("ci", "buildkite")]));
    }

    #[test]
    fn the_first_system_found_names_the_run() {
        let env = env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF_NAME", "main"),
            ("BUILDKITE", "true"),
            ("BUILDKITE_BRANCH", "other"),
        ]);
        let labels = checked(&env);
        assert_eq!(labels["ci"], "github-actions");
        assert_eq!(labels["branch"], "main");
    }

    #[test]
    fn an_over_long_value_is_cut_on_a_character_boundary() {
        // 'é' is two bytes: 600 of them cross the limit in the middle of none.
        let long = "é".repeat(600);
        let env = env(&[("GITLAB_CI", "true"), ("CI_PIPELINE_NAME", &long)]);
        let pipeline = &checked(&env)["pipeline"];
        assert_eq!(pipeline.len(), MAX_LABEL_VALUE);
        assert!(long.starts_with(pipeline.as_str()));

        let odd = format!("x{long}");
        let env = self::env(&[("GITLAB_CI", "true"), ("CI_PIPELINE_NAME", &odd)]);
        let pipeline = &checked(&env)["pipeline"];
        assert_eq!(pipeline.len(), MAX_LABEL_VALUE - 1);
        assert!(odd.starts_with(pipeline.as_str()));
    }
}
