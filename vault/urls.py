from django.urls import path

from vault import apis

urlpatterns = [
    path("memories", apis.MemoryListCreateApi.as_view(), name="memories"),
    path("memories/batch", apis.MemoryBatchCreateApi.as_view(), name="memories-batch"),
    path("memories/search", apis.MemorySearchApi.as_view(), name="memories-search"),
    path("memories/provenance/<uuid:provenance_id>", apis.MemoryProvenanceApi.as_view(),
         name="memories-provenance"),
    path("memories/<uuid:cube_id>", apis.MemoryDetailApi.as_view(), name="memory"),
    path("memories/<uuid:cube_id>/history", apis.MemoryHistoryApi.as_view(), name="memory-history"),
]
