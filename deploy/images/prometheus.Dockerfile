# Prometheus for machines where no image registry is reachable (the tests here): the host's
# own `prometheus` binary (Debian's package; linked against glibc only) on a glibc base image.
# Built by `deploy/images/build.sh --prometheus`; where you can pull images, use the official
# prom/prometheus image instead (deploy/compose/docker-compose.yml defaults to it).
ARG BASE
FROM ${BASE}

COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus
USER nobody
VOLUME ["/prometheus"]
EXPOSE 9090
# The same entrypoint as prom/prometheus: Compose passes --config.file and --storage.tsdb.path.
ENTRYPOINT ["/bin/prometheus"]
