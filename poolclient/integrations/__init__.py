"""Other libraries' HTTP stacks on a registry's pools, one module per stack.

Each module imports its library, so none is imported by ``import poolclient`` or by the
gunicorn hooks: a :class:`~poolclient.Registry` method imports the one it needs on first
use (``Registry.httpx2_transport()`` imports :mod:`.httpx2`). Each depends on the registry
and on nothing here but the mapping the httpx family shares (:mod:`._httpx_family`).

- :mod:`.httpx2`: an ``httpx2`` transport, for the OpenAI and Anthropic SDKs
  (``pip install 'poolclient[httpx2]'``);
- :mod:`.httpx`: an ``httpx`` transport (``pip install 'poolclient[httpx]'``);
- :mod:`.poolmanager`: a urllib3 ``PoolManager`` stand-in, for the Kubernetes client and
  google-auth's ``AuthorizedHttp``;
- :mod:`.elastic`: ``PooledNode``: ``Elasticsearch(url, node_class=PooledNode)``;
- :mod:`.opensearch`: ``PooledConnection``: ``OpenSearch(url, connection_class=...)``;
- :mod:`.botocore`: ``use_registry(client)``, boto3/botocore clients on the pools.
"""
