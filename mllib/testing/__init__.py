"""Local servers for tests, benchmarks and trying things out: never needed at run time.

  seaweed   a SeaweedFS S3 server on 127.0.0.1 (python3 -m mllib.testing.seaweed)
  mirror    an HTTP mirror of the download sites with fault injection (python3 -m mllib.testing.mirror)
  latency   a loopback TCP proxy that delays each HTTP request, to measure a store's latency being hidden
"""
