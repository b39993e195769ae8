-- Orthanc auto-routing to cxr-node: every CR or DX image Orthanc stores is sent to the node
-- (modality "cxrnode" in DicomModalities) by an asynchronous store job, so Orthanc's Lua thread
-- never waits on the network and a node that is down leaves a failed job to retry, not a stall.
--
-- Turn it on with  "LuaScripts": ["/etc/orthanc/route-chest-to-cxrnode.lua"]  in orthanc.json.
-- The node groups the images of a study itself (a study is analysed once it has been quiet for
-- study_stable_seconds). Its results (SEG, SR, secondary capture: modalities SEG, SR, OT) come
-- back into the same study and are not sent again. The node also takes a whole study (dose
-- reports, presentation states: stored with it, not analysed) if a site prefers to route studies.

function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if modality == 'CR' or modality == 'DX' then
    local job = { Resources = { instanceId }, Asynchronous = true }
    RestApiPost('/modalities/cxrnode/store', DumpJson(job, true))
  end
end
