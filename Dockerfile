# syntax=docker/dockerfile:1
# evalstream's container images, one target per role (docs/kubernetes.md, "Images"):
#
#   docker build --target judge          -t evalstream-judge .          # tiers 0 (rules) and 2 (llm)
#   docker build --target judge-encoder  -t evalstream-judge-encoder .  # tier 1 (encoder, with torch)
#   docker build --target exporter       -t evalstream-exporter .
#   docker build --target pipeline       -t evalstream-pipeline .       # Beam submitter + SDK harness
#   docker build --target tools          -t evalstream-tools .          # the `evalstream` CLI
#
# Each role gets its own virtualenv with only its optional dependency group, so the judge image carries
# neither Beam nor torch. Build tools (pip's build backend, Maven) stay in the build stages; the final
# stages hold the Python runtime, one virtualenv and (pipeline only) a Java runtime and Beam's jars.
# Every final stage runs as the unprivileged user 10001 and works with a read-only root filesystem
# (HOME and caches under /tmp, a volume in the Helm chart).

# Pinned by exact tag. PYTHON_IMAGE must be a Debian 12 image with Python 3.11: scripts/build-image.sh
# passes a locally made one.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG MAVEN_IMAGE=maven:3.9.11-eclipse-temurin-17

# ---------------------------------------------------------------------------------------- build stages

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
COPY pipelines/ pipelines/
COPY services/ services/
COPY protos/ protos/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# One virtualenv per role at the path the final stages use, each with one of pyproject's optional
# dependency groups. pip reads PIP_EXTRA_INDEX_URL from the environment: pass one as a build argument
# to take a CPU-only torch for the encoder.
FROM ${PYTHON_IMAGE} AS venv-judges
COPY --from=wheel /wheels/ /wheels/
RUN python3 -m venv /opt/evalstream \
    && /opt/evalstream/bin/pip install --no-cache-dir "$(echo /wheels/evalstream-*.whl)[judges]"

FROM ${PYTHON_IMAGE} AS venv-encoder
ARG PIP_EXTRA_INDEX_URL=""
COPY --from=wheel /wheels/ /wheels/
RUN python3 -m venv /opt/evalstream \
    && /opt/evalstream/bin/pip install --no-cache-dir "$(echo /wheels/evalstream-*.whl)[encoder]"

FROM ${PYTHON_IMAGE} AS venv-exporter
COPY --from=wheel /wheels/ /wheels/
RUN python3 -m venv /opt/evalstream \
    && /opt/evalstream/bin/pip install --no-cache-dir "$(echo /wheels/evalstream-*.whl)[exporter]"

FROM ${PYTHON_IMAGE} AS venv-pipeline
COPY --from=wheel /wheels/ /wheels/
RUN python3 -m venv /opt/evalstream \
    && /opt/evalstream/bin/pip install --no-cache-dir "$(echo /wheels/evalstream-*.whl)[pipeline]"

FROM ${PYTHON_IMAGE} AS venv-tools
ARG PIP_EXTRA_INDEX_URL=""
COPY --from=wheel /wheels/ /wheels/
RUN python3 -m venv /opt/evalstream \
    && /opt/evalstream/bin/pip install --no-cache-dir "$(echo /wheels/evalstream-*.whl)[all]"

# Beam's Flink job server (builds the Flink job jar from the pipeline) and Kafka IO expansion service,
# the releases of the installed apache-beam. Maven resolves them from its default repository.
FROM ${MAVEN_IMAGE} AS beam-jars
ARG BEAM_VERSION=2.77.0
ARG FLINK_MINOR=1.20
RUN mvn -B -q dependency:copy -DoutputDirectory=/jars -Dmdep.stripVersion=true \
        -Dartifact="org.apache.beam:beam-runners-flink-${FLINK_MINOR}-job-server:${BEAM_VERSION}" \
    && mvn -B -q dependency:copy -DoutputDirectory=/jars -Dmdep.stripVersion=true \
        -Dartifact="org.apache.beam:beam-sdks-java-io-expansion-service:${BEAM_VERSION}" \
    && mv "/jars/beam-runners-flink-${FLINK_MINOR}-job-server.jar" /jars/beam-runners-flink-job-server.jar \
    && rm -rf /root/.m2

# ---------------------------------------------------------------------------------------- final stages

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 evalstream \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin evalstream
ENV PATH=/opt/evalstream/bin:${PATH} \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /tmp

FROM runtime AS judge
COPY --from=venv-judges /opt/evalstream /opt/evalstream
USER 10001:10001
EXPOSE 50051 9100
# EVALSTREAM_JUDGE_NAME picks the tier (rules or llm); the chart sets it.
ENTRYPOINT ["python", "-m", "evalstream.judges.server"]

FROM runtime AS judge-encoder
COPY --from=venv-encoder /opt/evalstream /opt/evalstream
USER 10001:10001
EXPOSE 50051 9100
ENV EVALSTREAM_JUDGE_NAME=encoder
ENTRYPOINT ["python", "-m", "evalstream.judges.server"]

FROM runtime AS exporter
COPY --from=venv-exporter /opt/evalstream /opt/evalstream
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["python", "-m", "evalstream.exporter"]

# The Beam pipeline for Flink: the submitter (python -m evalstream.pipeline --runner FlinkRunner ...),
# the Python SDK worker pool (python -m apache_beam.runners.worker.worker_pool_main) and the Kafka
# expansion service (java -jar /opt/evalstream/jars/beam-sdks-java-io-expansion-service.jar PORT).
FROM runtime AS pipeline
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless=17.* \
    && rm -rf /var/lib/apt/lists/*
COPY --from=beam-jars /jars/ /opt/evalstream/jars/
COPY --from=venv-pipeline /opt/evalstream /opt/evalstream
USER 10001:10001
EXPOSE 50000 8097
ENTRYPOINT ["python", "-m", "evalstream.pipeline"]

FROM runtime AS tools
COPY --from=venv-tools /opt/evalstream /opt/evalstream
USER 10001:10001
ENTRYPOINT ["evalstream"]
CMD ["--help"]
