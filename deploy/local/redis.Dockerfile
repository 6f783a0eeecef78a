# A stand-in for the redis:7 image of docker-compose.yml where no registry
# can be reached: Debian's redis-server, keeping nothing on disk.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
USER redis
ENTRYPOINT ["redis-server"]
CMD ["--save", "", "--appendonly", "no"]
