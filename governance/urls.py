from django.urls import path

from governance import apis

urlpatterns = [
    path("audit", apis.AuditLogApi.as_view(), name="governance-audit"),
    path("snapshots", apis.SnapshotListCreateApi.as_view(), name="governance-snapshots"),
    path("snapshots/<uuid:snapshot_id>", apis.SnapshotDetailApi.as_view(), name="governance-snapshot"),
    path("timemachine/diff", apis.DiffApi.as_view(), name="governance-diff"),
    path("timemachine/rollback", apis.RollbackApi.as_view(), name="governance-rollback"),
]
urlpatterns += [
    path("pii/scan", apis.PiiScanApi.as_view(), name="governance-pii-scan"),
    path("pii/gate", apis.PiiGateApi.as_view(), name="governance-pii-gate"),
    path("pii/reports", apis.PiiReportListApi.as_view(), name="governance-pii-reports"),
    path("pii/reports/<uuid:report_id>", apis.PiiReportDetailApi.as_view(), name="governance-pii-report"),
    path("pii/reports/<uuid:report_id>/resolve", apis.PiiResolveApi.as_view(), name="governance-pii-resolve"),
]
urlpatterns += [
    path("watermark/detect", apis.WatermarkDetectApi.as_view(), name="governance-watermark-detect"),
]
