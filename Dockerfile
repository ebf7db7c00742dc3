# The image installs exactly the locked, hash-checked dependencies (requirements.lock,
# made by pip-compile --generate-hashes; README "Running with docker compose" says how to
# refresh it), then the project itself without resolving anything (--no-deps).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY oauth2_server ./oauth2_server
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && useradd --system oauth2
USER oauth2
EXPOSE 8000
ENV OAUTH2_HOST=0.0.0.0
CMD ["oauth2-server", "serve"]
