# The gateway as a container image: `docker build -t llm-gateway:0.1.0 .`
# Configuration comes from a mounted file (deploy/kubernetes/configmap.yaml), secrets
# from the environment.
# Every dependency comes from the lock files in requirements/, exact versions with hashes.
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements/build.txt requirements/build.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY service service
COPY generated generated
COPY clients/python clients/python
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt && rm /tmp/runtime.txt
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["llm-gateway"]
CMD ["--config", "/etc/llm-gateway/config.yaml"]
