# The coordinator: one static `tessera` binary on an empty image (no shell, no libc, no package
# manager). Built by deploy/images/build.sh, which puts the binary and an empty `data/` directory
# in the build context.
#
# Settings come from TESSERA_* variables (README "Configuration"); the defaults below listen on
# every interface of the container. Beyond loopback the coordinator refuses to start without TLS
# and tokens (TESSERA_TLS_CERT, TESSERA_TLS_KEY, TESSERA_AUTH=tokens) or the explicit
# TESSERA_INSECURE_NO_TLS / TESSERA_INSECURE_NO_AUTH: the image picks neither for you.
FROM scratch

COPY tessera /usr/local/bin/tessera
# The data directory (metadata store and blobs) and a /tmp, owned by the unprivileged user the
# coordinator runs as; a named volume mounted on /var/lib/tessera starts with this ownership.
COPY --chown=65532:65532 data/ /var/lib/tessera/
COPY --chown=65532:65532 data/ /tmp/

ENV TESSERA_DATA_DIR=/var/lib/tessera \
    TESSERA_LISTEN=0.0.0.0:8980 \
    TESSERA_HTTP_LISTEN=0.0.0.0:9464
VOLUME ["/var/lib/tessera"]
# gRPC (REAPI, agents, `tessera run`) and HTTP (/metrics, /healthz, /readyz).
EXPOSE 8980 9464
USER 65532:65532
# SIGTERM stops it cleanly (give it a few seconds: `docker stop -t 30`).
ENTRYPOINT ["/usr/local/bin/tessera", "coordinator"]
