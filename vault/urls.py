from django.urls import path

from vault import apis

urlpatterns = [
    path("admin/index/dead-letters", apis.IndexDeadLetterListApi.as_view(), name="index-dead-letters"),
    path(
        "admin/index/dead-letters/retry",
        apis.IndexDeadLetterRetryApi.as_view(),
        name="index-dead-letters-retry",
    ),
    path("memories", apis.MemoryListCreateApi.as_view(), name="memories"),
    path("memories/batch", apis.MemoryBatchCreateApi.as_view(), name="memories-batch"),
    path("memories/merge", apis.MemoryMergeApi.as_view(), name="memories-merge"),
    path("memories/search", apis.MemorySearchApi.as_view(), name="memories-search"),
    path(
        "memories/provenance/<uuid:provenance_id>",
        apis.MemoryProvenanceApi.as_view(),
        name="memories-provenance",
    ),
    path("memories/<uuid:cube_id>", apis.MemoryDetailApi.as_view(), name="memory"),
    path("memories/<uuid:cube_id>/history", apis.MemoryHistoryApi.as_view(), name="memory-history"),
    path("memories/<uuid:cube_id>/acl", apis.MemoryAclApi.as_view(), name="memory-acl"),
    path("memories/<uuid:cube_id>/lifecycle", apis.MemoryLifecycleApi.as_view(), name="memory-lifecycle"),
    path("memories/<uuid:cube_id>/purge", apis.MemoryPurgeApi.as_view(), name="memory-purge"),
]
