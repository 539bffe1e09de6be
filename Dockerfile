# The worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streams ./streams
COPY profiles ./profiles
COPY scoring ./scoring
COPY feature_repo ./feature_repo
RUN pip install --no-cache-dir -c constraints.txt .
ENV OPENBLAS_NUM_THREADS=1
CMD ["freshrec", "worker"]
