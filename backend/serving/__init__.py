"""Serving: the socket server (authentication, framing, one answer per request), the job service (queue, worker,
model cache) and the job store. The only package that knows about connections and clients."""
