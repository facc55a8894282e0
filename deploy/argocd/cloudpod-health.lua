-- Argo CD health check for cloudpods.migrahosting.com/CloudPod (Lua 5.1, as gopher-lua runs it).
-- Install: resource.customizations.health.cloudpods.migrahosting.com_CloudPod in argocd-cm
-- (see docs/argocd.md). Tested by tests/argocd_health.rs with lua5.1.
--
--   no status yet / status older than the spec     Progressing
--   phase Pending or Provisioning                   Progressing
--   phase Error                                     Degraded  (status.lastError)
--   QuotaAdmitted=False (QuotaExceeded, ScaleQuotaExceeded)
--                                                   Degraded  (waits for capacity: a person must act)
--   phase Active, Ready=True, powerState Stopped    Suspended (stopped on request)
--   phase Active, Ready=True                        Healthy
--   phase Active, Ready=False                       Progressing (an operation runs, no address yet)
--   being deleted (deletionTimestamp, Deleting)     Progressing
--   phase Deleted                                   Progressing (the controller admits it again)

local hs = {}

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
local spec = obj.spec or {}
local meta = obj.metadata or {}

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local quota = condition(status, "QuotaAdmitted")

-- Deletion first: a pod on its way out is never Healthy, and a failed destroy shows as Error.
if phase ~= "Error" and (meta.deletionTimestamp ~= nil or phase == "Deleting") then
  hs.status = "Progressing"
  hs.message = "Deleting: " .. text(ready, "the VM is being destroyed")
  return hs
end

if meta.generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < meta.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(meta.generation)
  return hs
end

if phase == "Error" then
  hs.status = "Degraded"
  local reason = ""
  if ready ~= nil and ready.reason ~= nil and ready.reason ~= "" and ready.reason ~= "Error" then
    reason = ready.reason .. ": "
  end
  hs.message = reason .. (status.lastError or text(ready, "the last operation failed"))
  return hs
end

-- QuotaAdmitted=False with reason Admitting is only "not yet"; the refusals end in QuotaExceeded.
if quota ~= nil and quota.status == "False" and string.find(quota.reason or "", "QuotaExceeded", 1, true) then
  hs.status = "Degraded"
  local message = text(quota, status.lastError or "the tenant's quota is full")
  if phase == "Active" then
    message = message .. " (the VM keeps its current size)"
  end
  hs.message = (quota.reason or "QuotaExceeded") .. ": " .. message
  return hs
end

if phase == "Pending" or phase == "Provisioning" then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. text(ready, "the VM is being built")
  return hs
end

if phase == "Active" then
  if ready == nil or ready.status ~= "True" then
    hs.status = "Progressing"
    hs.message = text(ready, "waiting for the VM to be ready")
    return hs
  end
  local where = ""
  if status.vmid ~= nil then
    where = "VM " .. tostring(status.vmid)
    if status.node ~= nil then
      where = where .. " on " .. status.node
    end
    where = where .. ": "
  end
  if spec.powerState == "Stopped" or ready.reason == "Stopped" then
    hs.status = "Suspended"
    hs.message = where .. "stopped as requested (spec.powerState: Stopped)"
    return hs
  end
  hs.status = "Healthy"
  hs.message = where .. "running"
  if status.ipAddress ~= nil then
    hs.message = hs.message .. " at " .. status.ipAddress
  end
  local restart = condition(status, "RestartRequired")
  if restart ~= nil and restart.status == "True" then
    hs.message = hs.message .. "; " .. text(restart, "new cores/memory apply at the next reboot")
  end
  if status.lastError ~= nil then
    hs.message = hs.message .. "; last error: " .. status.lastError
  end
  return hs
end

if phase == "Deleted" then
  hs.status = "Progressing"
  hs.message = "The VM was destroyed; waiting for the operator to admit the pod again"
  return hs
end

hs.status = "Progressing"
hs.message = "Unknown phase " .. tostring(phase)
return hs
