# A small non-root image with the `als2otel` entry point.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home als2otel
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/als2otel.yaml /etc/als2otel/als2otel.yaml
USER 10001
# ALS gRPC, HTTP (/metrics, /healthz, /readyz)
EXPOSE 11800 9464
ENTRYPOINT ["als2otel"]
CMD ["serve", "--config", "/etc/als2otel/als2otel.yaml"]
