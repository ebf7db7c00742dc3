FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY oauth2_server ./oauth2_server
RUN pip install --no-cache-dir . && useradd --system oauth2
USER oauth2
EXPOSE 8000
ENV OAUTH2_HOST=0.0.0.0
CMD ["oauth2-server", "serve"]
