# One image for every tradeplane process: `tradeplane operator | engine | gateway |
# recorder` (the Helm chart runs each with its own arguments).
#
# Stage 1 builds the wheel from the sources, with the engine's and the ledger's cores
# compiled by mypyc (hatch_build.py; a C compiler is all it adds); stage 2 installs only
# that wheel on a slim Python, as a non-root user, with no compiler and no sources.

FROM python:3.12-slim AS build
WORKDIR /src
# The compiler is the base image's Debian release's own, so its version is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir build==1.6.1
COPY pyproject.toml README.md hatch_build.py ./
COPY src src
COPY engine engine
COPY gateway gateway
COPY operator operator
ENV HATCH_BUILD_HOOK_ENABLE_CUSTOM=true
RUN python -m build --wheel --outdir /wheels

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 tradeplane \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tradeplane
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["tradeplane"]
CMD ["--help"]
