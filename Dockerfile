# Placeholder until the Helm chart and image land: a single image whose entrypoint is
# `tradeplane`. The multi-stage build (wheel in the first stage, non-root runtime in
# the second) comes with the chart.
FROM python:3.12-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 tradeplane
USER tradeplane
ENTRYPOINT ["tradeplane"]
CMD ["--help"]
