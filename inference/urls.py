from django.urls import path

from inference.apis import (
    AdapterInstallApi,
    ChatCompletionApi,
    DecisionListApi,
    DistillationCreateApi,
    DistillationDetailApi,
)

app_name = "inference"

urlpatterns = [
    path("v1/chat/completions", ChatCompletionApi.as_view(), name="chat-completions"),
    path("v1/memhub/distillations", DistillationCreateApi.as_view(), name="distillation-create"),
    path(
        "v1/memhub/distillations/<uuid:job_id>", DistillationDetailApi.as_view(), name="distillation-detail"
    ),
    path("v1/memhub/adapters", AdapterInstallApi.as_view(), name="adapter-install"),
    path("v1/memhub/requests/<uuid:request_id>/decisions", DecisionListApi.as_view(), name="decisions"),
]
