pytest_plugins = ["tests.plugins.milvus"]
