# An agent: a build image of yours (the tools your tests and actions need) plus the static
# `tessera` binary. Built by deploy/images/build.sh --base IMAGE (default: the Debian image of
# deploy/images/debian-base.sh).
#
#   docker build --build-arg BASE=registry.example.com/ci/build:2024 -f agent.Dockerfile CONTEXT
#
# The agent runs as root in the container: its sandbox makes Linux namespaces for every action,
# which the container must allow (deploy/compose/docker-compose.yml says what that takes).
ARG BASE
FROM ${BASE}

COPY tessera /usr/local/bin/tessera

ENV TESSERA_COORDINATOR=http://coordinator:8980 \
    TESSERA_AGENT_WORK_DIR=/var/lib/tessera-agent
# Blob cache and exec roots: a volume keeps the cache warm across container restarts.
VOLUME ["/var/lib/tessera-agent"]
# SIGTERM drains: no new leases, running ones finish and are reported, then exit 0. Give
# `docker stop` a grace period as long as your longest action (Compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tessera", "agent"]
