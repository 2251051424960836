"""Background work: jobs are database rows first; Redis (arq) or an in-process queue only rings the bell.

- :mod:`gateway.workers.jobs`: the ``jobs`` table as a service (enqueue, claim with a lease,
  complete, fail with backoff, find due work).
- :mod:`gateway.workers.dispatch`: the job-kind registry, :func:`execute` (claim → handler →
  complete/fail, idempotent under at-least-once delivery), and the two dispatchers: in-process
  (embedded mode) and arq (scale-out). The same job functions run under both.
- The sweeper (:meth:`Dispatcher.sweep`) re-rings every due job from the table, so a lost Redis
  message, a killed worker or arq giving up after ``max_tries`` loses nothing.
"""
